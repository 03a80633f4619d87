"""`WaveNet`: the WaveNet paper's network (van den Oord et al. 2016, section 2) for text.

Where `ConvWaveNet` is the lecture's tree read as convolutions, this is the full design:

    ids -> embedding (R channels: the residual stream) -> dropout (embd_dropout, 0 by default)
    each block, dilation d (1, 2, 4, ..., repeated in cycles):
        u = norm(x)                                 per position, or none
        h = W * [u(t - d), u(t)] + b                kernel-2 dilated causal conv -> 2R
        z = drop(tanh(h_filter) * sigmoid(h_gate))  the gated activation -> R
        x = x + W_res z,   skip += W_skip z         1x1 convolutions (the last block: skip only)
    logits = W_2 relu(W_1 drop(relu(skip)) + b_1) + b_2   two 1x1 convolutions (head_layers 2, the paper's)
          or W_2 drop(relu(skip)) + b_2                   one (head_layers 1, the default)
    in training, loss = cross-entropy + tar * mean_t |relu(skip_t) - relu(skip_{t-1})|^2 / S
          (TAR, Merity et al. 2017; tar 0 by default: over each name's characters, t - 1 the
          position before, the boundary state before the first)

Nothing mixes positions except the causal convolutions, and nothing mixes names at all: no
BatchNorm, so a training-mode forward is as causal as an eval-mode one. Dropout acts on each
block's gated activation and on the skip sum (and, if asked, on the embeddings).

The contract is `ConvWaveNet`'s. `block_size` is the receptive field, 1 + sum of the
dilations; `model(X, Y)` takes `pad_names(words, vocab, model.block_size)` rows and returns
logits (B, L + 1, V) aligned with Y and the mean loss over real targets; it is the readable
reference. `model(PackedNames)` is the fast path for training and evaluation on packed whole
names (batches.py): the same blocks over one (R, C) sequence, rows gathered as [older, newer]
pairs, so no work is spent on the boundary prefix or on padding. `step` with its cache
(cache.py) generates one position per block (Fast WaveNet, Paine et al. 2016). One
`GatedBlock.forward` serves all three.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..batches import PackedNames
from ..config import WaveNetConfig
from ..layers import (
    dropout_mask,
    kernel_matrix,
    lm_loss,
    packed_change_penalty,
    packed_loss,
    padded_change_penalty,
    tap_major_conv,
)
from .cache import RingCache
from .wavenet_fused import fused_forward


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the channels of each position (no mean, no bias)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x):
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.weight


class Dropout(nn.Module):
    """`nn.Dropout`'s function (zero each value with probability p in training, scale the rest
    by 1 / (1 - p)) with its mask drawn by `torch.rand`: this CPU build draws it 2-3x faster
    than dropout's `bernoulli_` (0.25-0.37 ms against 0.72-0.82 ms for a (520, 128) batch,
    one thread), and a step at 128 channels draws nine of them."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return x * dropout_mask(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _norm(kind: str, channels: int) -> nn.Module:
    return {"none": nn.Identity, "layer": nn.LayerNorm, "rms": RMSNorm}[kind](channels)


class GatedBlock(nn.Module):
    """One residual block: causal conv (kernel 2, dilation d) -> tanh * sigmoid -> dropout ->
    1x1 into the residual stream (absent in the last block, which has nothing after it) and
    into the skip stream. The conv kernel is stored tap-major (layers.tap_major_conv), so
    the block applies it as one matrix to the pair [u(t - d) | u(t)]."""

    def __init__(self, channels: int, skip: int, dilation: int, norm: str, dropout: float, last: bool):
        super().__init__()
        self.dilation, self.residual = dilation, 0 if last else channels
        self.norm = _norm(norm, channels)
        self.conv = tap_major_conv(channels, 2 * channels, dilation, bias=True)
        self.drop = Dropout(dropout)
        self.proj = nn.Linear(channels, self.residual + skip)  # [residual | skip], one product

    def forward(self, pair: torch.Tensor, x: torch.Tensor | None):
        """pair (..., 2C): the normalized inputs [at t - d | at t]; x (..., C): the residual
        stream at t. Returns (the stream after this block or None for the last, skip (..., S))."""
        h = F.linear(pair, kernel_matrix(self.conv.weight), self.conv.bias)  # (..., 2C)
        f, g = h.chunk(2, -1)
        o = self.proj(self.drop(torch.tanh(f) * torch.sigmoid(g)))  # (..., C + S)
        return (x + o[..., :self.residual] if self.residual else None), o[..., self.residual:]


class WaveNet(nn.Module):
    """Gated residual WaveNet; see the module docstring. idx (B, T), T >= block_size ->
    logits (B, T - block_size + 1, V): output j predicts from idx[:, j : j + block_size]."""

    Config = WaveNetConfig
    kind = "wavenet"
    fused = True  # False: training steps run autograd through the blocks (the reference)

    def __init__(self, vocab_size: int, n_layers: int = WaveNetConfig.n_layers,
                 n_cycles: int = WaveNetConfig.n_cycles, n_residual: int = WaveNetConfig.n_residual,
                 n_skip: int = WaveNetConfig.n_skip, dropout: float = WaveNetConfig.dropout,
                 norm: str = WaveNetConfig.norm, embd_dropout: float = WaveNetConfig.embd_dropout,
                 head_layers: int = WaveNetConfig.head_layers, tar: float = WaveNetConfig.tar,
                 generator: torch.Generator | None = None):
        super().__init__()
        # the config checks them
        self.config = WaveNetConfig(n_layers=n_layers, n_cycles=n_cycles, n_residual=n_residual,
                                    n_skip=n_skip, dropout=dropout, norm=norm, embd_dropout=embd_dropout,
                                    head_layers=head_layers, tar=tar)
        self.vocab_size = vocab_size
        self.dilations = self.config.dilations
        self.block_size = self.config.block_size
        self.wte = nn.Embedding(vocab_size, n_residual)
        self.embd_drop = Dropout(embd_dropout)
        last = len(self.dilations) - 1
        self.blocks = nn.ModuleList(GatedBlock(n_residual, n_skip, d, norm, dropout, last=i == last)
                                    for i, d in enumerate(self.dilations))
        self.hidden = nn.Linear(n_skip, n_skip) if head_layers == 2 else None
        self.drop = Dropout(dropout)
        self.head = nn.Linear(n_skip, vocab_size)
        _init_(self, generator)

    def dropouts(self) -> list[Dropout]:
        """The dropouts that config.dropout sets (every block's and the head's; not the
        embeddings'): a recipe's `final_dropout` ramps their p (train.dropout_at)."""
        return [*(block.drop for block in self.blocks), self.drop]

    @property
    def receptive_field(self) -> int:
        return 1 + sum(block.dilation for block in self.blocks)

    def _logits(self, skip: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.relu(skip))
        return self.head(h if self.hidden is None else F.relu(self.hidden(h)))

    def forward(self, idx, targets: torch.Tensor | None = None):
        """`idx` (B, T) padded ids (targets (B, T - block_size + 1), -1 ignored) -> (logits, loss);
        or a `PackedNames` batch -> (logits per packed row (R, V), loss)."""
        if isinstance(idx, PackedNames):
            return self._forward_packed(idx)
        B, T = idx.shape
        if T < self.block_size:
            raise ValueError(f"WaveNet needs at least {self.block_size} ids per row, got {T}")
        P = T - self.block_size + 1  # number of outputs: the last P positions
        x, skip = self.embd_drop(self.wte(idx)), 0  # (B, T, C)
        for block in self.blocks:
            d = block.dilation
            u = block.norm(x)
            # a valid causal conv: position t >= d reads t - d; the stream loses its first d positions
            x, s = block(torch.cat([u[:, :-d], u[:, d:]], -1), x[:, d:])  # (B, T - d, C), (B, T - d, S)
            skip = skip + s[:, -P:]  # (B, P, S)
        logits = self._logits(skip)  # (B, P, V)
        loss = lm_loss(logits, targets)
        if self.training and self.config.tar and targets is not None:
            loss = loss + self.config.tar * padded_change_penalty(F.relu(skip), targets)
        return logits, loss

    def _forward_packed(self, batch: PackedNames):
        """Row 0 is the all-boundary state, rows 1.. the names' characters (batches.py); one
        gather by `batch.pairs[i]` gives every row's [older | newer] pair. A training step
        without a norm takes the hand-written step (wavenet_fused.py), the same function, in
        float32; under autocast (`--dtype bf16`) it runs here, where autocast takes the products."""
        if (self.training and torch.is_grad_enabled() and self.config.norm == "none" and self.fused
                and not autocast_on(self.wte.weight.device.type)):
            return fused_forward(self, batch)
        R = len(batch.ids)
        x, skip = self.embd_drop(self.wte(batch.ids)), 0  # (R, C)
        for block, pairs in zip(self.blocks, batch.pairs):
            u = block.norm(x)
            x, s = block(u.index_select(0, pairs).view(R, 2 * u.shape[-1]), x)  # (R, C), (R, S)
            skip = skip + s
        logits = self._logits(skip)  # (R, V)
        loss = packed_loss(logits, batch)
        if self.training and self.config.tar:
            loss = loss + self.config.tar * packed_change_penalty(F.relu(skip), batch)
        return logits, loss

    # ------------------------------------------------------------------ generation

    def boundary_states(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Eval mode, at a position whose receptive field holds only boundary tokens: each
        block's conv input u (C,), and the logits (V,) there."""
        x, skip, inputs = self.wte.weight[0], 0, []
        for block in self.blocks:
            u = block.norm(x)
            inputs.append(u)
            x, s = block(torch.cat([u, u]), x)
            skip = skip + s
        return inputs, self._logits(skip)

    def new_cache(self, batch_size: int) -> RingCache:
        return RingCache(self, batch_size)

    def step(self, ix: torch.Tensor, cache: RingCache) -> torch.Tensor:
        """Cached generation: one new id per row, ix (B,) -> next logits (B, V), computing one
        position per block. Eval mode."""
        x, skip = self.wte(ix), 0  # (B, C)
        for i, block in enumerate(self.blocks):
            x, s = block(cache.pair(i, block.norm(x)), x)  # the ring holds each block's conv inputs
            skip = skip + s
        cache.advance()
        return self._logits(skip)

    def extra_repr(self) -> str:
        return f"dilations={self.dilations}, block_size={self.block_size}"


WaveNetCache = RingCache  # its name before the two models' caches became one


def autocast_on(device_type: str) -> bool:
    """Whether autocast is on for this device type (torch >= 2.4 asks it so; 2.2-2.3 had one
    function per device)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def parameter_count(config: WaveNetConfig, vocab_size: int) -> int:
    """The number of parameters, from the config alone (tested against the model)."""
    C, S, n = config.n_residual, config.n_skip, len(config.dilations)
    norm = {"none": 0, "layer": 2 * C, "rms": C}[config.norm]
    conv = 2 * C * 2 * C + 2 * C
    proj = (C + 1) * (C + S) * (n - 1) + (C + 1) * S  # the last block has no residual output
    hidden = (S + 1) * S if config.head_layers == 2 else 0
    return vocab_size * C + n * (norm + conv) + proj + hidden + (S + 1) * vocab_size


def _init_(model: WaveNet, generator: torch.Generator | None) -> None:
    """From one generator, in module order: embedding N(0, 1); every matrix N(0, 1/fan_in);
    the residual and skip projections scaled by 1/sqrt(number of blocks), so the streams
    start at unit scale; the output layer by 0.1, so the first loss is close to ln(V);
    biases zero, norm gains one."""
    scale = len(model.blocks) ** -0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:  # a norm's gain
                p.fill_(1.0)
            elif name == "wte.weight":
                p.copy_(torch.randn(p.shape, generator=generator))
            else:
                fan_in = p[0].numel()
                w = torch.randn(p.shape, generator=generator) / fan_in**0.5
                if name.endswith("proj.weight"):
                    w *= scale
                elif name == "head.weight":
                    w *= 0.1
                p.copy_(w)
