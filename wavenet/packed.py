"""The fast training step of `ConvWaveNet`: whole names packed into rows, and one fused
forward and backward pass written out by hand.

`ConvWaveNet(X, Y)` on `pad_names` rows is the readable reference: autograd through a
dozen small operators per layer, with the packing indices rebuilt on every call. Here the
batch source does that bookkeeping once per batch (`PackedNames`), and the model's forward
and backward become a few large matrix products per layer, so a step costs close to its
arithmetic. tests/test_packed.py proves both paths compute the same loss, gradients and
BatchNorm statistics (and both equal the lecture's MLP, tests/test_equivalence.py).

Layout. Row 0 stands for every name's boundary prefix: its receptive field holds only
boundary tokens, so at every layer it carries the one all-boundary state `c`. Rows 1..M
are the names' characters, name after name. A kernel-2 layer of dilation d reads, for row
r, the pair (input d positions back, input at r): row r - d inside the same name, else
row 0. Output 0 of every name is read from row 0; the output after character k of a name
from that character's row. `weight[r]` counts the real targets read from row r, which is
also the weight of that row in BatchNorm's statistics (the conv counts exactly the
positions aligned with real targets, models.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from . import distributed


@dataclass
class PackedNames:
    """A training batch of whole names, packed (see the module docstring). R = M + 1 rows.

    ids (R,): the id at each row (0 at row 0). pairs: one (2R,) index per layer, the
    interleaved [older, newer] rows each row reads. first_pairs: pairs[0] mapped to ids
    (layer 0 reads the embedding table directly). weight (R,): real targets per row;
    odd_rows: the rows whose weight is not 1 (row 0, rows without a target), odd_extra: their
    weight - 1 (the backward pass treats every row as weight 1, then corrects these).
    targets (N,): flat indices row * V + target of every real target, in `pad_names` order
    (Y[Y != -1]: name by name, output 0 first). `n_names`, `n_targets`: for rates and reporting.
    n_group_targets: under torchrun, the real targets of the whole global batch, this share
    one of N (BatchNorm's count; None: summed across ranks when needed)."""

    ids: torch.Tensor
    pairs: list[torch.Tensor]
    first_pairs: torch.Tensor
    weight: torch.Tensor
    targets: torch.Tensor
    odd_rows: torch.Tensor
    odd_extra: torch.Tensor
    n_names: int
    n_targets: int
    n_group_targets: int | None = None

    def to(self, device) -> PackedNames:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device, non_blocking=True)
        moved["pairs"] = [p.to(device, non_blocking=True) for p in self.pairs]
        return PackedNames(**moved)


def pack(chars: torch.Tensor, lengths: torch.Tensor, block_size: int, vocab_size: int,
         targets: torch.Tensor | None = None, dilations: Sequence[int] | None = None) -> PackedNames:
    """Pack names given as their characters' ids, concatenated (`chars`, (M,)), and their
    lengths (B,). `targets` (M + B,) overrides the natural targets (each name's characters
    then 0) in `pad_names` order, name by name; -1 drops a target, as in Y. Without
    `targets` every name needs at least one character; with them a name may have none
    (only its output 0). `dilations`: one pair index per layer of these dilations (the
    gated WaveNet's); by default the tree's, 1, 2, 4, ... below block_size.
    All of it is vectorised: a few dozen tensor operations per batch, no Python per name."""
    B, M = len(lengths), len(chars)
    starts = torch.cumsum(lengths, 0) - lengths  # where each name's characters begin in `chars`
    name_of = torch.repeat_interleave(torch.arange(B), lengths)  # (M,)
    offset = torch.arange(M) - starts[name_of]  # k: position of each character in its name
    rows = torch.arange(1, M + 1)
    is_first = torch.zeros(M + B, dtype=torch.bool)  # name b's targets: output 0, then one per character
    is_first[starts + torch.arange(B)] = True
    if targets is None:
        targets = torch.zeros(M + B, dtype=torch.long)  # each name's characters, then 0
        targets[~is_first] = torch.where(offset == lengths[name_of] - 1, 0, chars.roll(-1))
        targets[is_first] = chars[starts]
    flat = torch.empty(M + B, dtype=torch.long)  # row * V + target, in pad_names order
    flat[is_first] = targets[is_first]  # output 0 reads row 0
    flat[~is_first] = rows * vocab_size + targets[~is_first]
    real = targets != -1
    weight = torch.zeros(M + 1).index_add_(0, flat[real] // vocab_size, torch.ones(int(real.sum())))
    flat = flat[real]
    ids = torch.cat([torch.zeros(1, dtype=torch.long), chars])
    if dilations is None:
        dilations = [2**i for i in range(block_size.bit_length() - 1)]  # 1, 2, ..., block_size / 2
    by_dilation = {}
    for d in dict.fromkeys(dilations):
        older = torch.where(offset >= d, rows - d, 0)
        by_dilation[d] = torch.stack([torch.cat([torch.zeros(1, dtype=torch.long), older]),
                                      torch.arange(M + 1)], 1).reshape(-1)
    pairs = [by_dilation[d] for d in dilations]  # layers of one dilation share their index
    odd_rows = torch.nonzero(weight != 1)[:, 0]
    return PackedNames(ids=ids, pairs=pairs, first_pairs=ids[pairs[0]], targets=flat, weight=weight,
                       odd_rows=odd_rows, odd_extra=weight[odd_rows] - 1, n_names=B, n_targets=len(flat))


def pack_padded(X: torch.Tensor, Y: torch.Tensor, block_size: int, vocab_size: int,
                dilations: Sequence[int] | None = None) -> PackedNames:
    """`pack` from `pad_names` rows: X (B, block_size + L), Y (B, L + 1). A row keeps its
    characters up to its last real target (the rest is padding)."""
    real = Y != -1
    rows = real.any(1)  # a row without a real target contributes nothing
    X, Y, real = X[rows], Y[rows], real[rows]
    idx = X[:, block_size:]
    reach = real.flip(1).cumsum(1).flip(1) > 0  # (B, L + 1): outputs up to the last real one
    keep = reach[:, 1:]  # characters that feed a kept output
    return pack(idx[keep], keep.sum(1), block_size, vocab_size, targets=Y[reach], dilations=dilations)


def packed_rows(words: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoded names -> (chars (M,), lengths (B,)) for `pack`."""
    lengths = torch.tensor([len(w) for w in words], dtype=torch.long)
    return torch.tensor([i for w in words for i in w], dtype=torch.long), lengths


class FusedTree(torch.autograd.Function):
    """ConvWaveNet's training step on a `PackedNames` batch: forward and backward by hand.

    Per layer: one gather builds the (R, 2C) pairs, one matrix product applies the kernel,
    BatchNorm's weighted statistics come from two matrix-vector products, and normalize +
    tanh is one multiply-add and an in-place tanh(a) = 2 sigmoid(2a) - 1 (this CPU build's
    `torch.tanh` takes 4-8x as long as `sigmoid` on these shapes; the two differ by at most
    2e-7 in float32, 1e-16 in float64). The backward pass is the same in reverse, with
    BatchNorm's gradient in closed form (the lecture's unbiased variance):
    dh = gamma * rstd * (da - w * (sum(da) / N + xhat * sum(da * xhat) / (N - 1))).
    Under torchrun, N and both sums are the global batch's (all ranks'), as in the statistics.
    Training mode updates the running statistics as `layers.BatchNorm` does; eval mode
    normalizes with them (no gradient through the statistics)."""

    @staticmethod
    def forward(ctx, batch: PackedNames, training: bool, norms, wte, head_w, head_b, *layer_params):
        R, N = len(batch.ids), float(batch.n_targets)
        w = batch.weight.to(wte.dtype)
        w_mean, w_var = w / N, w / (N - 1)  # the weighted mean and the unbiased variance, as dot products
        group = distributed.active() if training else None  # under torchrun: statistics of all ranks' rows
        N_bn = N if group is None else float(batch.n_group_targets or
                                             distributed.all_reduce_(w.new_tensor([N], dtype=torch.float64)))
        saved, stats, x = [], [], None
        for level, norm in enumerate(norms):
            kernel, gamma, beta = layer_params[3 * level: 3 * level + 3]
            H, C, _ = kernel.shape
            W = kernel.transpose(1, 2).reshape(H, 2 * C)  # [tap at t - d | tap at t]: a view (models.py)
            source, pairs = (wte, batch.first_pairs) if level == 0 else (x, batch.pairs[level])
            p = source.index_select(0, pairs).view(R, 2 * C)
            h = torch.mm(p, W.t())  # (R, H)
            if training and group is not None:
                mean, var = distributed.moments(h, w)
                hc = h.sub_(mean)
                stats.append((mean, var))
            elif training:
                mean = torch.mv(h.t(), w_mean)
                hc = h.sub_(mean)
                var = torch.mv(hc.square().t(), w_var)
                stats.append((mean, var))
            else:
                mean, var = norm.running_mean, norm.running_var
                hc = h.sub_(mean)
            rstd = torch.rsqrt(var + norm.eps)
            xhat = hc.mul_(rstd)
            x = torch.addcmul(beta, xhat, gamma).mul_(2).sigmoid_().mul_(2).sub_(1)  # = tanh, faster
            saved += [p, W, xhat, rstd, x]
        if training:  # the running statistics, as layers.BatchNorm moves them
            with torch.no_grad():
                for norm, (mean, var) in zip(norms, stats):
                    norm.running_mean.lerp_(mean, norm.momentum)
                    norm.running_var.lerp_(var, norm.momentum)
        logp = torch.log_softmax(torch.addmm(head_b, x, head_w.t()), 1)  # (R, V)
        loss = logp.view(-1).index_select(0, batch.targets).sum().div_(-N)
        ctx.batch, ctx.training, ctx.N, ctx.N_bn, ctx.group = batch, training, N, N_bn, group
        ctx.save_for_backward(logp, w, wte, head_w, *layer_params, *saved)
        ctx.mark_non_differentiable(logp)
        return loss, logp

    @staticmethod
    def backward(ctx, dloss, _dlogp):
        batch, N = ctx.batch, ctx.N
        logp, w, wte, head_w, *rest = ctx.saved_tensors
        n_params = 3 * len(batch.pairs)
        layer_params, saved = rest[:n_params], rest[n_params:]
        # d loss / d logits: softmax times the targets read from each row, minus one per target
        g = logp.exp().mul_(w[:, None])
        g.view(-1).index_add_(0, batch.targets, g.new_full((1,), -1.0).expand(len(batch.targets)))
        g.mul_(dloss / N)
        grads_head_w = torch.mm(g.t(), saved[-1])
        grads_head_b = g.sum(0)
        dx = torch.mm(g, head_w)  # (R, H)
        grads_layers = [None] * n_params
        for level in reversed(range(len(batch.pairs))):
            p, W, xhat, rstd, y = saved[5 * level: 5 * level + 5]
            gamma = layer_params[3 * level + 1]
            H, C2 = W.shape
            da = torch.ops.aten.tanh_backward(dx, y)
            dbeta, dgamma = da.sum(0), (da * xhat).sum(0)
            if ctx.training:  # through the batch statistics too: da - w * (u + xhat * v), in place
                if ctx.group is None:
                    u, v = dbeta / N, dgamma / (N - 1)
                else:  # the sums over the global batch; dbeta, dgamma stay this rank's (DDP sums those)
                    sums = distributed.all_reduce_(torch.cat([dbeta, dgamma]))
                    u, v = sums[:H] / ctx.N_bn, sums[H:] / (ctx.N_bn - 1)
                odd = batch.odd_rows  # the few rows whose weight is not 1 (row 0, ignored targets)
                fix = torch.addcmul(u, xhat.index_select(0, odd), v).mul_(batch.odd_extra[:, None])
                dh = da.sub_(u).addcmul_(xhat, v, value=-1).index_add_(0, odd, fix, alpha=-1)
                dh.mul_(gamma * rstd)
            else:
                dh = da.mul_(gamma * rstd)
            dW = torch.mm(dh.t(), p)  # (H, 2C)
            # in the kernel's own (tap-major) layout: autograd keeps it as the gradient, no copy
            grads_layers[3 * level: 3 * level + 3] = [dW.view(H, 2, C2 // 2).transpose(1, 2), dgamma, dbeta]
            dp = torch.mm(dh, W).view(-1, C2 // 2)  # (2R, C): the gradient of each [older, newer] half
            if level == 0:
                dx = dp.new_zeros(wte.shape).index_add_(0, batch.first_pairs, dp)  # d wte
            else:
                dx = dp.new_zeros(len(batch.ids), C2 // 2).index_add_(0, batch.pairs[level], dp)
        return (None, None, None, dx, grads_head_w, grads_head_b, *grads_layers)


def fused_forward(model, batch: PackedNames):
    """(logp (R, V), mean loss over the batch's real targets) for ConvWaveNet `model`.
    logp holds log-probabilities per packed row; it carries no gradient. Always float32, also
    under bf16 autocast (the conv's step is small; its arithmetic is exact as written)."""
    params = [t for conv, norm in zip(model.fuse, model.norm) for t in (conv.weight, norm.weight, norm.bias)]
    # the hand-written backward expects the forward's float32 arithmetic: no autocast inside
    with torch.autocast(model.wte.weight.device.type, enabled=False):
        loss, logp = FusedTree.apply(batch, model.training, list(model.norm), model.wte.weight,
                                     model.head.weight, model.head.bias, *params)
    return logp, loss

