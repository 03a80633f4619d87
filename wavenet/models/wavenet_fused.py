"""`WaveNet`'s training step on packed names: one forward and backward pass, written out by hand.

The reference is autograd through `GatedBlock.forward` (wavenet.py), about a dozen small
operators a block forward and twice that backward. Here each block is two matrix products
forward and four backward, a gather and a scatter, and a few in-place element-wise passes:

- the gate's tanh(f) * sigmoid(g) is one in-place sigmoid over [2f | g], since
  tanh(f) = 2 sigmoid(2f) - 1 (this CPU build's `torch.tanh` takes several times as long as
  `sigmoid`; the two differ by at most 2e-7 in float32, 1e-16 in float64);
- dropout draws the same masks as the reference, in the same order (embeddings, each block,
  the skip sum), so with one seed both paths compute the same function;
- the residual add and the skip sum reuse one buffer each instead of a new tensor a block;
- TAR (`tar`, layers.packed_change_penalty) adds its gradient 2 tar (r - r_before) / (M S)
  at each row and takes the same from the row before, where it reads r_before.

tests/test_wavenet.py proves it computes the reference's loss and every gradient (float64
1e-12, float32 2e-6, dropout on and off, ignored targets anywhere). It serves `norm="none"`
(the default; a norm takes the reference) in the parameters' dtype. Under autocast
(`--dtype bf16`) the model trains through the reference instead, whose matrix products
autocast runs in bfloat16: this step's arithmetic is float32 as written.
"""

from __future__ import annotations

import torch

from ..layers import dropout_mask, kernel_matrix, packed_change, packed_change_penalty


def _mask(like: torch.Tensor, p: float) -> torch.Tensor | None:
    """The mask wavenet.Dropout draws, or None where it draws none (p = 0)."""
    return dropout_mask(like, p) if p else None


class FusedWaveNet(torch.autograd.Function):
    """The gated blocks and the output head on a `PackedNames` batch in training mode."""

    @staticmethod
    def forward(ctx, batch, shape, wte, hidden_w, hidden_b, head_w, head_b, *block_params):
        p_block, p_embd, C, tar = shape
        R, N = len(batch.ids), len(batch.targets)
        x = wte.index_select(0, batch.ids)  # (R, C): the residual stream
        m_embd = _mask(x, p_embd)
        if m_embd is not None:
            x.mul_(m_embd)
        saved, skip = [], None
        n_blocks = len(batch.pairs)
        for i, pairs in enumerate(batch.pairs):
            conv_w, conv_b, proj_w, proj_b = block_params[4 * i: 4 * i + 4]
            pair = x.index_select(0, pairs).view(R, 2 * C)  # [older | newer], a copy
            h = torch.addmm(conv_b, pair, kernel_matrix(conv_w).t())  # (R, 2C): [filter | gate]
            h[:, :C].mul_(2)
            h.sigmoid_()  # [sigmoid(2f) | sigmoid(g)]
            a = h[:, :C].mul(2).sub_(1)  # tanh(f)
            z = a.mul_(h[:, C:])  # the gated activation, in a's buffer
            mask = _mask(z, p_block)
            if mask is not None:
                z.mul_(mask)
            o = torch.addmm(proj_b, z, proj_w.t())  # (R, C + S), or (R, S) in the last block
            if i < n_blocks - 1:
                x.add_(o[:, :C])  # in place: the pair above is a copy
                s = o[:, C:]
            else:
                s = o
            skip = s.clone() if skip is None else skip.add_(s)
            saved += [pair, h, z, mask]
        r = skip.relu_()  # (R, S)
        m_head = _mask(r, p_block)
        rd = r if m_head is None else r * m_head
        q = rd if hidden_w is None else torch.addmm(hidden_b, rd, hidden_w.t()).relu_()  # the head's input
        logits = torch.addmm(head_b, q, head_w.t())
        logp = torch.log_softmax(logits, 1)
        loss = logp.view(-1).index_select(0, batch.targets).sum().div_(-N)
        if tar:  # TAR on the head's input
            loss.add_(packed_change_penalty(r, batch), alpha=tar)
        ctx.batch, ctx.C, ctx.N, ctx.tar = batch, C, N, tar
        # every tensor through save_for_backward (None for a mask not drawn), so memory counts see them
        ctx.save_for_backward(wte, hidden_w, head_w, logp, r, rd, q, m_embd, m_head, *block_params, *saved)
        ctx.mark_non_differentiable(logits)
        return loss, logits

    @staticmethod
    def backward(ctx, dloss, _dlogits):
        batch, C, N, tar = ctx.batch, ctx.C, ctx.N, ctx.tar
        wte, hidden_w, head_w, logp, r, rd, q, m_embd, m_head, *rest = ctx.saved_tensors
        n_blocks = len(batch.pairs)
        block_params, saved = rest[:4 * n_blocks], rest[4 * n_blocks:]
        # d loss / d logits: the softmax times the targets each row has, minus one at each target
        g = logp.exp().mul_(batch.weight.to(logp.dtype)[:, None])
        g.view(-1).index_add_(0, batch.targets, g.new_full((1,), -1.0).expand(N))
        g.mul_(dloss / N)
        d_head_w, d_head_b = torch.mm(g.t(), q), g.sum(0)
        dq = torch.mm(g, head_w)
        if hidden_w is None:  # one head layer: q is rd
            d_hidden_w = d_hidden_b = None
            dskip = dq
        else:
            dq.mul_(q > 0)
            d_hidden_w, d_hidden_b = torch.mm(dq.t(), rd), dq.sum(0)
            dskip = torch.mm(dq, hidden_w)
        if m_head is not None:
            dskip.mul_(m_head)
        if tar:  # d/dr of tar * sum (r - r[older])^2 / (M S): at each row, minus the same at its older row
            change, older, count = packed_change(r, batch)
            d_change = change.mul_(dloss * (2 * tar / count))
            dskip.add_(d_change).index_add_(0, older, d_change, alpha=-1)
        dskip.mul_(r > 0)  # (R, S): the same gradient reaches every block's skip output
        dx = dskip.new_zeros(len(batch.ids), C)  # the stream after the last block feeds nothing
        ones = dskip.new_ones(len(batch.ids))  # column sums as matrix-vector products: faster here
        d_blocks = [None] * (4 * n_blocks)
        for i in reversed(range(n_blocks)):
            conv_w, _, proj_w, _ = block_params[4 * i: 4 * i + 4]
            pair, h, z, mask = saved[4 * i: 4 * i + 4]
            if i == n_blocks - 1:  # the last block: skip only
                d_proj_w, d_proj_b = torch.mm(dskip.t(), z), torch.mv(dskip.t(), ones)
                dz = torch.mm(dskip, proj_w)
            else:
                out = torch.cat([dx, dskip], 1)  # (R, C + S): [d stream | d skip]
                d_proj_w, d_proj_b = torch.mm(out.t(), z), torch.mv(out.t(), ones)
                dz = torch.mm(out, proj_w)
            if mask is not None:
                dz.mul_(mask)
            s2f, sg = h[:, :C], h[:, C:]  # sigmoid(2f), sigmoid(g)
            a = s2f.mul(2).sub_(1)  # tanh(f)
            dh = torch.empty_like(h)  # d/df = dz sigmoid(g) (1 - tanh(f)^2), d/dg = dz tanh(f) s (1 - s)
            torch.ops.aten.tanh_backward.grad_input(dz * sg, a, grad_input=dh[:, :C])
            torch.ops.aten.sigmoid_backward.grad_input(dz.mul_(a), sg, grad_input=dh[:, C:])
            d_conv_w = torch.mm(dh.t(), pair)  # (2C, 2C) as [tap at t - d | tap at t]
            # in the kernel's own tap-major layout (layers.tap_major_conv), no copy
            d_blocks[4 * i: 4 * i + 4] = [d_conv_w.view(2 * C, 2, C).transpose(1, 2), torch.mv(dh.t(), ones),
                                          d_proj_w, d_proj_b]
            dpair = torch.mm(dh, kernel_matrix(conv_w))  # (R, 2C)
            dx.index_add_(0, batch.pairs[i], dpair.view(-1, C))  # += through the gather
        if m_embd is not None:
            dx.mul_(m_embd)
        d_wte = dx.new_zeros(wte.shape).index_add_(0, batch.ids, dx)
        return (None, None, d_wte, d_hidden_w, d_hidden_b, d_head_w, d_head_b, *d_blocks)


def fused_forward(model, batch):
    """(logits per packed row (R, V), mean loss over the real targets) for a `WaveNet` in
    training mode with norm "none"; the logits carry no gradient."""
    params = []
    for block in model.blocks:
        params += [block.conv.weight, block.conv.bias, block.proj.weight, block.proj.bias]
    # the blocks' and the head's p as they stand (a ramp moves them; WaveNet.dropouts)
    shape = (model.drop.p, model.embd_drop.p, model.config.n_residual, model.config.tar)
    hidden = (None, None) if model.hidden is None else (model.hidden.weight, model.hidden.bias)
    with torch.autocast(model.wte.weight.device.type, enabled=False):  # the arithmetic as written
        loss, logits = FusedWaveNet.apply(batch, shape, model.wte.weight, *hidden, model.head.weight,
                                          model.head.bias, *params)
    return logits, loss
