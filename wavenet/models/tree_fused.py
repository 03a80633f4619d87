"""`ConvWaveNet`'s training step on packed names: one fused forward and backward pass,
written out by hand.

The reference (`ConvWaveNet(X, Y)` on `pad_names` rows, tree.py) runs autograd through a
dozen small operators per layer over every padded position. Here the batch arrives packed
(`batches.PackedNames`: no prefix, no padding), and the forward and backward passes become
a few large matrix products per layer, so a step costs close to its arithmetic.
tests/test_packed.py proves both compute the same loss, gradients and BatchNorm statistics
(and both equal the lecture's MLP, tests/test_equivalence.py).
"""

from __future__ import annotations

import platform

import torch

from .. import distributed
from ..layers import kernel_matrix
from . import native


class FusedTree(torch.autograd.Function):
    """The tree's layers on a `PackedNames` batch in training mode: forward and backward by hand.

    Per layer: one gather builds the (R, 2C) pairs, one matrix product applies the kernel
    (where most rows' older input is row 0, the taps apart instead: `layer_way`), BatchNorm's
    weighted statistics come from two matrix-vector products, and normalize + tanh is
    one multiply-add and a tanh (`tanh_kind`: `torch.tanh`, or 2 sigmoid(2a) - 1 where
    that is faster; the two differ by at most 2e-7 in float32, 1e-16 in float64). The backward
    pass is the same in reverse, with BatchNorm's gradient in closed form (the lecture's
    unbiased variance), two passes over the rows:
    dh = gamma * rstd * (da - w * (sum(da) / N + xhat * sum(da * xhat) / (N - 1))).
    Under torchrun, N and both sums are the global batch's (all ranks'), as in the statistics.
    The running statistics move as `layers.BatchNorm` moves them. On the CPU in one process,
    a layer's BatchNorm forward and backward are one C call each (bn_tanh.c, native.py: the same
    formulas, the same order of sums over rows; a step about 1.2x faster at 256 positions), where
    its library builds; the torch operators otherwise (and on CUDA, and under torchrun)."""

    @staticmethod
    def forward(ctx, batch, norms, wte, head_w, head_b, *layer_params):
        R, N = len(batch.ids), float(batch.n_targets)
        w = batch.weight.to(wte.dtype)
        group = distributed.active()  # under torchrun: statistics of all ranks' rows
        N_bn = N if group is None else float(batch.n_group_targets or
                                             distributed.all_reduce_(w.new_tensor([N], dtype=torch.float64)))
        saved, stats, x, ways = [], [], None, []
        direct = tanh_kind(wte.device) == "tanh"
        minus_one = None if direct else wte.new_full((), -1.0)
        # (forward, backward) in C, or None; the C reads every tensor as wte's dtype
        same = all(t.dtype == wte.dtype for t in layer_params)
        kern = native.kernels(wte) if group is None and same else None
        if kern is None:  # the weighted mean and the unbiased variance, as dot products
            w_mean, w_var = w / N, w / (N - 1)
        for level, norm in enumerate(norms):
            kernel, gamma, beta = layer_params[3 * level: 3 * level + 3]
            W = kernel_matrix(kernel)  # (H, 2C): [tap at t - d | tap at t], a view
            ways.append(layer_way(batch, level))
            if ways[-1] == "split":  # row 0's one older input apart, the rest by their own product
                xin = wte.index_select(0, batch.ids) if level == 0 else x
                h, xo = split_forward(xin, W, batch, level)
                inputs = [xin, xo]
            else:
                source, pairs = (wte, batch.first_pairs) if level == 0 else (x, batch.pairs[level])
                p = source.index_select(0, pairs).view(R, W.shape[1])
                h = torch.mm(p, W.t())  # (R, H)
                inputs = [p, None]
            if kern is not None:  # bn_tanh.c: the same arithmetic, one call
                x, xhat, mean, var, rstd = native_norm_tanh(kern[0], h, w, N, norm.eps, gamma, beta,
                                                            minus_one)
            else:
                if group is not None:
                    mean, var = distributed.moments(h, w)
                    hc = h.sub_(mean)
                else:
                    mean = torch.mv(h.t(), w_mean)
                    hc = h.sub_(mean)
                    var = torch.mv(hc.square().t(), w_var)
                rstd = torch.rsqrt(var + norm.eps)
                xhat = hc.mul_(rstd)
                if direct:
                    x = torch.addcmul(beta, xhat, gamma).tanh_()
                else:  # tanh(a) = 2 sigmoid(2a) - 1, a = beta + xhat gamma: the 2s ride on the (H,) vectors
                    s = torch.addcmul(beta * 2, xhat, gamma * 2).sigmoid_()  # (scaling by 2 rounds nothing)
                    x = torch.add(minus_one, s, alpha=2, out=s)
            stats.append((mean, var))
            saved += [*inputs, W, xhat, rstd, x]
        with torch.no_grad():  # the running statistics, as layers.BatchNorm moves them
            for norm, (mean, var) in zip(norms, stats):
                norm.running_mean.lerp_(mean, norm.momentum)
                norm.running_var.lerp_(var, norm.momentum)
        logp = torch.log_softmax(torch.addmm(head_b, x, head_w.t()), 1)  # (R, V)
        loss = logp.view(-1).index_select(0, batch.targets).sum().div_(-N)
        ctx.batch, ctx.N, ctx.N_bn, ctx.group, ctx.ways, ctx.kern = batch, N, N_bn, group, ways, kern
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
            p, xo, W, xhat, rstd, y = saved[6 * level: 6 * level + 6]
            gamma = layer_params[3 * level + 1]
            H, C2 = W.shape
            if ctx.kern is not None:
                dh, dgamma, dbeta = native_norm_tanh_backward(ctx.kern[1], dx, y, xhat, gamma, rstd, w, N)
            else:
                da = torch.ops.aten.tanh_backward(dx, y)
                dbeta, dgamma = da.sum(0), (da * xhat).sum(0)
                # through the batch statistics too: da - w * (u + xhat * v), in place
                if ctx.group is None:
                    u, v = dbeta / N, dgamma / (N - 1)
                else:  # the sums over the global batch; dbeta, dgamma stay this rank's (DDP sums those)
                    sums = distributed.all_reduce_(torch.cat([dbeta, dgamma]))
                    u, v = sums[:H] / ctx.N_bn, sums[H:] / (ctx.N_bn - 1)
                # gamma rstd (da - u - xhat v) in two passes: da s - s u, then - xhat (s v)
                s = gamma * rstd
                dh = torch.addcmul(torch.mul(s, u).neg_(), da, s).addcmul_(xhat, s * v, value=-1)
                odd = batch.odd_rows  # the few rows whose weight is not 1 (row 0, ignored targets)
                fix = torch.addcmul(u, xhat.index_select(0, odd), v).mul_(batch.odd_extra[:, None]).mul_(s)
                dh.index_add_(0, odd, fix, alpha=-1)
            way = ctx.ways[level]
            if way == "split":  # p: the layer's input x
                dW, dx = split_backward(dh, p, xo, W, batch, level)
                if level == 0:
                    dx = dx.new_zeros(wte.shape).index_add_(0, batch.ids, dx)  # d wte
            else:
                dW = torch.mm(dh.t(), p)  # (H, 2C)
                dp = torch.mm(dh, W).view(-1, C2 // 2)  # (2R, C): the gradient of each [older, newer] half
                if level == 0:
                    dx = dp.new_zeros(wte.shape).index_add_(0, batch.first_pairs, dp)  # d wte
                else:
                    dx = dp.new_zeros(len(batch.ids), C2 // 2).index_add_(0, batch.pairs[level], dp)
            # in the kernel's own (tap-major) layout: autograd keeps it as the gradient, no copy
            grads_layers[3 * level: 3 * level + 3] = [dW.view(H, 2, C2 // 2).transpose(1, 2), dgamma, dbeta]
        return (None, None, dx, grads_head_w, grads_head_b, *grads_layers)


def layer_way(batch, level: int) -> str:
    """How the step multiplies a layer's pairs [older | newer] by its kernel, "pairs" or
    "split"; both are the same arithmetic up to rounding (tests/test_packed.py proves each
    against the reference). "pairs": gather the pairs, one product. "split": where at most a
    quarter of the rows have their older input inside their name, the rest all read row 0,
    whose older tap is one matrix-vector product instead of a row of the product each
    (`split_forward`); for names (about 6 characters) the layers of dilation 8 and more.
    Measured at (228, 128) with 2 threads, a layer's forward and backward took 381 us as
    pairs and 240 us split when no row reads inside its name, 314 at 3% of the rows, 370 at
    27-37%, 401 at 62%. A fixed rule on the batch's indices, so a run and its resume take the
    same path."""
    return "split" if 4 * len(batch.inner_rows[level]) <= len(batch.ids) else "pairs"


def split_forward(x, W, batch, level):
    """h = [older | newer] @ W.t() for a layer's input rows x (R, C), with the older tap
    taken apart: the newer tap of every row (one product), row 0's older tap once, added to
    the rows that read it (a rank-1 update), and the older tap of the K inner rows (a product
    of K rows). Returns h (R, H) and the inner rows' older inputs (K, C), for the backward."""
    C = x.shape[1]
    older_tap, newer_tap = W[:, :C], W[:, C:]
    h = torch.mm(x, newer_tap.t())
    h.addr_(batch.reads_root[level].to(x.dtype), torch.mv(older_tap, x[0]))
    xo = x.index_select(0, batch.inner_older[level])
    if len(xo):
        h.index_add_(0, batch.inner_rows[level], torch.mm(xo, older_tap.t()))
    return h, xo


def split_backward(dh, x, xo, W, batch, level):
    """`split_forward`'s gradients from dh (R, H): the kernel's (H, 2C) and the input's (R, C)."""
    C = x.shape[1]
    older_tap, newer_tap = W[:, :C], W[:, C:]
    d_root = torch.mv(dh.t(), batch.reads_root[level].to(dh.dtype))  # dh summed over row 0's readers
    d_older = torch.outer(d_root, x[0])
    dx = torch.mm(dh, newer_tap)
    dx[0].add_(torch.mv(older_tap.t(), d_root))
    if len(xo):
        d_inner = dh.index_select(0, batch.inner_rows[level])
        d_older.addmm_(d_inner.t(), xo)
        dx.index_add_(0, batch.inner_older[level], torch.mm(d_inner, older_tap))
    return torch.cat([d_older, torch.mm(dh.t(), x)], 1), dx


def native_norm_tanh(forward, h, w, N, eps, gamma, beta, minus_one):
    """BatchNorm and tanh of a layer's (R, H) products h by bn_tanh.c: (x, xhat, mean, var,
    rstd), xhat in h's storage, as the torch operators of `FusedTree.forward` compute them
    (minus_one None: tanh; else 2 sigmoid(2a) - 1, the C scaling beta and gamma by 2)."""
    R, H = h.shape
    assert h.is_contiguous()  # a product's output: written in place, row by row
    a, stats = torch.empty_like(h), h.new_empty(3, H)  # stats: mean, var, rstd
    gamma, beta = gamma.contiguous(), beta.contiguous()
    forward(R, H, w.data_ptr(), N, N - 1, eps, 1.0 if minus_one is None else 2.0, h.data_ptr(),
            gamma.data_ptr(), beta.data_ptr(), a.data_ptr(), *(t.data_ptr() for t in stats))
    x = a.tanh_() if minus_one is None else torch.add(minus_one, a.sigmoid_(), alpha=2, out=a)
    return x, h, stats[0], stats[1], stats[2]


def native_norm_tanh_backward(backward, dx, y, xhat, gamma, rstd, w, N):
    """(dh, dgamma, dbeta) from d loss / d x (R, H) by bn_tanh.c, dh in dx's storage."""
    R, H = dx.shape
    dx = dx.contiguous()  # (it is: a product's output or a scatter's)
    grads, work = dx.new_empty(2, H), dx.new_empty(3, H)
    backward(R, H, w.data_ptr(), N, N - 1, dx.data_ptr(), y.data_ptr(), xhat.data_ptr(),
             gamma.contiguous().data_ptr(), rstd.data_ptr(), grads[0].data_ptr(), grads[1].data_ptr(),
             work.data_ptr())
    return dx, grads[0], grads[1]


def tanh_kind(device: torch.device) -> str:
    """How the fused step takes its tanh: "tanh" (`torch.tanh`) or "sigmoid" (2 sigmoid(2a) - 1),
    whichever this device's kernels run faster. Measured with 2 threads: an AMD EPYC with AVX2
    took 44 us for `tanh` against 7 for `sigmoid` at (263, 128), an AMD EPYC with AVX-512 57
    against 11; an Intel Xeon with AVX-512 7 against 11 at (228, 128). So the fast `tanh` is
    Intel's with AVX-512 (or CUDA's). A fixed rule, not a timing, so a run and its resume on one
    machine take one path."""
    if device.type != "cpu":
        return "tanh"
    fast = torch.backends.cpu.get_cpu_capability() == "AVX512" and cpu_vendor() == "GenuineIntel"
    return "tanh" if fast else "sigmoid"


def cpu_vendor() -> str:
    """The CPU's vendor string ("GenuineIntel", "AuthenticAMD", ...), or "" where unknown."""
    vendor = native.cpuinfo().get("vendor_id")
    if vendor is not None:
        return vendor
    return "GenuineIntel" if "GenuineIntel" in platform.processor() else ""


def fused_forward(model, batch):
    """(log-probabilities per packed row (R, V), mean loss over the batch's real targets) for
    a ConvWaveNet `model` in training mode; the log-probabilities carry no gradient. Always
    float32, also under bf16 autocast (the conv's step is small; its arithmetic is exact as
    written)."""
    params = [t for conv, norm in zip(model.fuse, model.norm) for t in (conv.weight, norm.weight, norm.bias)]
    # the hand-written backward expects the forward's float32 arithmetic: no autocast inside
    with torch.autocast(model.wte.weight.device.type, enabled=False):
        loss, logp = FusedTree.apply(batch, list(model.norm), model.wte.weight, model.head.weight,
                                     model.head.bias, *params)
    return logp, loss
