"""Layers shared by the models: the lecture's BatchNorm, its initialisation, the losses, and
the tap-major kernel-2 convolution.

BatchNorm choice. The lecture's BatchNorm1d normalises a training batch with its mean and
its *unbiased* variance (`x.var()`, correction 1) and keeps running statistics with momentum
0.1, also from the unbiased variance. `torch.nn.BatchNorm1d` normalises with the biased
variance and wants (N, C, L). We keep the lecture's arithmetic, so the hierarchical model is
the lecture's model, and we split BatchNorm into two steps, `statistics(rows)` and
`normalize(x, ...)`: the caller decides which rows count (the MLP: every (batch, group) row;
the convolution: only positions aligned with real targets, see `models/tree.py`), and the same
statistics are then applied to a tensor of any shape with features last.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed


class BatchNorm(nn.Module):
    """The lecture's BatchNorm1d over feature vectors (rows of size num_features)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))   # gamma
        self.bias = nn.Parameter(torch.zeros(num_features))    # beta
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def statistics(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rows (N, C) -> (mean, var), each (C,). In training: the batch statistics
        (unbiased variance), and the running buffers move towards them; under torchrun, the
        statistics of every rank's rows together (distributed.py). In eval: the running
        buffers."""
        if not self.training:
            return self.running_mean, self.running_var
        rows = rows.to(self.running_mean.dtype)  # bf16 under autocast: statistics in the buffers' float32
        if distributed.active() is not None:  # the whole global batch's, across ranks
            mean, var = distributed.moments(rows, differentiable=True)
        else:
            var, mean = torch.var_mean(rows, dim=0, correction=1)
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)  # (1 - m) * running + m * batch
            self.running_var.lerp_(var, self.momentum)
        return mean, var

    def normalize(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """gamma * (x - mean) / sqrt(var + eps) + beta over x (..., C), features last (both
        models run channels last), computed as one fused x * scale + shift."""
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        return torch.addcmul(shift, x, scale)


def lecture_linear_weight(fan_in: int, fan_out: int, generator: torch.Generator | None) -> torch.Tensor:
    """The lecture's Linear init, randn((fan_in, fan_out)) / sqrt(fan_in), returned in
    torch's (fan_out, fan_in) layout. Same draws, same order as the lecture."""
    return (torch.randn((fan_in, fan_out), generator=generator) / fan_in**0.5).T.contiguous()


def lm_loss(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
    """Mean cross-entropy over real targets; -1 marks positions to ignore.
    logits (..., V), targets (...) with the same leading shape."""
    if targets is None:
        return None
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


def packed_loss(logits: torch.Tensor, batch) -> torch.Tensor:
    """Mean cross-entropy over a packed batch's real targets (`batches.PackedNames`): logits
    (R, V) per packed row, batch.targets the flat indices row * V + target."""
    return -F.log_softmax(logits, -1).view(-1)[batch.targets].mean()


def packed_change(r: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor, int]:
    """TAR's change on a packed batch, r (R, S) per packed row: (r at each row - r at the row
    before it in the same name, or at row 0, the boundary state, for a first character; the
    older rows, the older half of the dilation-1 pair batch.pairs[0]; the count M S the
    penalty is a mean over: the names' characters (rows 1..; row 0 is no character) by the
    channels). Row 0's own change is zero."""
    older = batch.pairs[0].view(-1, 2)[:, 0]
    return r - r.index_select(0, older), older, max(len(r) - 1, 1) * r.shape[1]


def packed_change_penalty(r: torch.Tensor, batch) -> torch.Tensor:
    """TAR's penalty on a packed batch: the mean of `packed_change`'s squares."""
    change, _, count = packed_change(r, batch)
    return change.square().sum() / count


def padded_change_penalty(r: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The same over `pad_names` rows: r (B, P, S) per output, targets (B, P). Output j >= 1
    reads character j of its name, output 0 the boundary state; the outputs counted are those
    up to each row's last real target (what `batches.pack_padded` keeps), so this equals
    `packed_change_penalty` on the packed batch."""
    real = targets != -1
    kept = (real.flip(1).cumsum(1).flip(1) > 0)[:, 1:]  # (B, P - 1): outputs 1.. up to the last real one
    change = (r[:, 1:] - r[:, :-1]).square().sum(-1)  # (B, P - 1)
    return (change * kept).sum() / (max(int(kept.sum()), 1) * r.shape[-1])


def dropout_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout's scaled keep mask for a tensor shaped as `like`: 0 with probability p, else
    1 / (1 - p), drawn with `torch.rand` (models/wavenet.py's `Dropout`, and the WaveNet's
    hand-written step, which must draw the same masks)."""
    return torch.rand_like(like).ge_(p).mul_(1 / (1 - p))


def kernel_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A fusion weight as the one matrix (H, 2C) that multiplies a pair [older | newer]: a
    Linear's (H, 2C) as it is; a kernel-2 Conv1d's (H, C, 2) as [tap at t - d | tap at t], a
    view when the kernel is stored tap-major (`tap_major_conv`)."""
    if weight.dim() == 2:
        return weight
    H, C, _ = weight.shape
    return weight.transpose(1, 2).reshape(H, 2 * C)


def tap_major_conv(c_in: int, h: int, dilation: int, bias: bool = False) -> nn.Conv1d:
    """A kernel-2 `nn.Conv1d` (no bias unless asked) whose weight (h, c_in, 2), the usual shape, is
    stored tap-major: a view of an (h, 2, c_in) block. Then each tap, and [tap 0 | tap 1]
    as one (h, 2 c_in) matrix, are plain row-major matrices: the training step multiplies
    by them, and gets their gradient, without copying the kernel. State dicts, `F.conv1d`
    and `load_state_dict` see an ordinary (h, c_in, 2) tensor."""
    conv = nn.Conv1d(c_in, h, kernel_size=2, dilation=dilation, bias=bias)
    conv.weight = nn.Parameter(torch.empty(h, 2, c_in).transpose(1, 2))  # filled by the model's init
    return conv
