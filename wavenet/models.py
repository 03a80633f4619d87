"""The models. Every model has one contract: `forward(idx, targets=None) -> (logits, loss)`.

`HierarchicalMLP` is the final network of makemore part 5: characters are embedded, then
fused in pairs, level by level (FlattenConsecutive(2) -> Linear -> BatchNorm -> Tanh), so 8
characters of context take 3 levels. It sees one window per target.

`ConvWaveNet` is that tree read as what it is, a WaveNet (van den Oord et al. 2016): a stack
of dilated causal convolutions, kernel 2, dilations 1, 2, 4, ..., run over a whole padded
name so that one pass predicts every position. `ConvWaveNet.from_mlp` carries the weights
over exactly; tests/test_equivalence.py proves the two compute the same function.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ConvConfig, MLPConfig, TreeConfig, check_block_size, config_from_record
from .errors import WavenetError
from .gated import WaveNet
from .layers import BatchNorm, lecture_linear_weight, lm_loss, tap_major_conv
from .packed import PackedNames, fused_forward


class _Tree(nn.Module):
    """What both models hold: an embedding, one fusion layer and BatchNorm per level of
    the tree (log2(block_size) levels), the output layer, and the lecture's init."""

    Config = TreeConfig

    def __init__(self, vocab_size: int, block_size: int, n_embd: int, n_hidden: int,
                 generator: torch.Generator | None, make_fuse):
        super().__init__()
        self.config = self.Config(block_size=block_size, n_embd=n_embd, n_hidden=n_hidden)  # checks them
        n_levels = check_block_size(block_size)
        self.vocab_size, self.block_size = vocab_size, block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        widths = [n_embd] + [n_hidden] * n_levels
        self.fuse = nn.ModuleList(make_fuse(widths[i], n_hidden, 2**i) for i in range(n_levels))
        self.norm = nn.ModuleList(BatchNorm(n_hidden) for _ in range(n_levels))
        self.head = nn.Linear(n_hidden, vocab_size)
        _lecture_init_(self, generator)  # the same draws for both models from the same generator

    @property
    def kind(self) -> str:
        return self.Config.kind


class HierarchicalMLP(_Tree):
    """The lecture's hierarchical model, exactly: 76,579 parameters at the defaults.

    idx (B, block_size) -> logits (B, vocab_size). `generator` seeds the lecture's
    initialisation (embedding, then each Linear, in order, from one stream of randn).
    """

    Config = MLPConfig

    def __init__(self, vocab_size: int, block_size: int = TreeConfig.block_size,
                 n_embd: int = TreeConfig.n_embd, n_hidden: int = TreeConfig.n_hidden,
                 generator: torch.Generator | None = None):
        # level i fuses [older, newer] of width 2 * C_in with one Linear
        super().__init__(vocab_size, block_size, n_embd, n_hidden, generator,
                         lambda c_in, h, dilation: nn.Linear(2 * c_in, h, bias=False))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.shape
        if T != self.block_size:
            raise ValueError(f"HierarchicalMLP takes windows of {self.block_size} ids, got {T}")
        x = self.wte(idx)  # (B, T, C)
        for fuse, norm in zip(self.fuse, self.norm):
            B, T, C = x.shape
            # FlattenConsecutive(2): pair (older, newer) side by side, without ever squeezing
            x = fuse(x.reshape(B, T // 2, 2 * C))  # (B, T/2, H)
            mean, var = norm.statistics(x.reshape(-1, x.size(-1)))  # over batch *and* groups
            x = torch.tanh(norm.normalize(x, mean, var))
        logits = self.head(x[:, 0])  # (B, 1, H) -> (B, V)
        return logits, lm_loss(logits, targets)


class ConvWaveNet(_Tree):
    """The same tree as a stack of dilated causal convolutions, run over whole sequences.

    Level i of the tree fuses two vectors 2**i positions apart, so it is a Conv1d with
    kernel 2 and dilation 2**i; the receptive field is 1 + (1 + 2 + ... + block/2) =
    block_size. idx (B, T), T >= block_size -> logits (B, T - block_size + 1, V), where
    output j is the prediction from idx[:, j : j + block_size]. Targets use -1 for padding.

    Layout: the weights are `nn.Conv1d` kernels (H, C, 2), and one layout, channels last
    (B, T, C), runs through the whole stack, in batch and incremental mode alike. Each layer
    applies its kernel as two matrix products, tap 0 on the input d positions back and tap 1
    on the current one: the same sum `F.conv1d` computes on (B, C, T) (tested), measured
    faster here (benchmarks/README.md), and with no transposes around BatchNorm or the head.

    BatchNorm in training takes its statistics over the positions aligned with real
    targets, at every layer: layer l at (absolute) position t counts iff output
    t - block_size + 1 has a real target. Extra right padding changes nothing.
    """

    Config = ConvConfig

    def __init__(self, vocab_size: int, block_size: int = TreeConfig.block_size,
                 n_embd: int = TreeConfig.n_embd, n_hidden: int = TreeConfig.n_hidden,
                 generator: torch.Generator | None = None):
        super().__init__(vocab_size, block_size, n_embd, n_hidden, generator, tap_major_conv)

    @property
    def dilations(self) -> list[int]:
        """The layers' dilations, 1, 2, ..., block_size / 2 (what `packed.pack` indexes)."""
        return [conv.dilation[0] for conv in self.fuse]

    @property
    def receptive_field(self) -> int:
        return 1 + sum(self.dilations)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, skip_prefix: bool = True):
        """`skip_prefix`: when the first block_size ids of every row are boundary tokens (as
        `pad_names` makes them), compute each layer's all-boundary output once instead of at
        every position. Same function either way; False forces the plain path.

        `idx` may instead be a `packed.PackedNames` batch (targets inside it): the fused
        training step, which returns (log-probabilities per packed row, loss)."""
        if isinstance(idx, PackedNames):
            return fused_forward(self, idx)
        B, T = idx.shape
        if T < self.block_size:
            raise ValueError(f"ConvWaveNet needs at least {self.block_size} ids per row, got {T}")
        real = None if targets is None else targets != -1  # (B, P): outputs that count in BatchNorm
        if skip_prefix and T > self.block_size and not idx[:, :self.block_size].any():
            if self.training and real is not None:
                return self._forward_packed(idx[:, self.block_size:], targets)
            else:
                logits = self._forward_skip_prefix(idx[:, self.block_size:])
        else:
            logits = self._forward_full(idx, real)
        return logits, lm_loss(logits, targets)

    def _forward_full(self, idx, real):
        P = idx.shape[1] - self.block_size + 1  # number of outputs
        x = self.wte(idx)  # (B, T, C)
        for conv, norm in zip(self.fuse, self.norm):
            d = conv.dilation[0]
            x = _causal_conv(conv, x[:, :-d], x[:, d:])  # (B, T - d, H): a valid causal conv
            rows = _aligned_rows(x[:, -P:], real) if self.training else None  # last P are aligned
            mean, var = norm.statistics(rows)
            x = torch.tanh(norm.normalize(x, mean, var))
        return self.head(x)  # (B, P, V)

    def _forward_skip_prefix(self, idx):
        """idx (B, n): the ids after the boundary prefix. Position block - 1 and everything
        before it sees only boundary tokens, at every layer: one vector `c` per layer stands
        for all of them, and a layer of dilation d reads it wherever t - d falls there."""
        B, n = idx.shape
        c = self.wte.weight[0]  # (C,) the embedding of the boundary token
        x = self.wte(idx)  # (B, n, C): positions block .. T - 1
        for conv, norm in zip(self.fuse, self.norm):
            d = conv.dilation[0]
            older = torch.cat([c.expand(B, min(d, n), -1), x[:, :max(n - d, 0)]], dim=1)  # inputs at t - d
            x = _causal_conv(conv, older, x)  # (B, n, H)
            c = _causal_conv(conv, c, c)  # (H,) the all-boundary output
            # training without targets: every row's position block - 1 (c), then all others
            rows = torch.cat([c.expand(B, -1), x.reshape(-1, x.shape[-1])]) if self.training else None
            mean, var = norm.statistics(rows)
            x = torch.tanh(norm.normalize(x, mean, var))
            c = torch.tanh(norm.normalize(c, mean, var))
        first = self.head(c).expand(B, 1, -1)  # (B, 1, V)
        return torch.cat([first, self.head(x)], dim=1)  # (B, n + 1, V)

    def _forward_packed(self, idx, targets):
        """Training on whole names without computing padding: the skip-prefix path with the
        positions that matter packed into one (M, C) sequence. idx (B, n) after the prefix,
        targets (B, n + 1). A row keeps its positions up to its last real target; the input
        d positions back is the packed row d earlier, or `c` where that falls in the prefix.
        Returns (logits, loss). The loss is taken from the packed rows of real targets, so
        nothing the size of the padding enters the backward pass; the padded logits are
        filled from the same rows for the caller, 0 where no target reads them."""
        real = targets != -1  # (B, n + 1)
        B, n = idx.shape
        targets_after = real[:, 1:]  # (B, n): input k feeds output k + 1
        keep = targets_after.flip(1).cumsum(1).flip(1) > 0  # (B, n): k up to the last real target
        offset = torch.arange(n, device=idx.device).expand(B, n)[keep]  # (M,) k of each kept input
        counted = targets_after[keep]  # (M,) which kept positions count in BatchNorm
        c = self.wte.weight[0]
        x = self.wte(idx[keep])  # (M, C), row by row
        for conv, norm in zip(self.fuse, self.norm):
            d = conv.dilation[0]
            back = torch.arange(len(offset), device=idx.device) - d + 1  # index into [c; x]
            older = torch.cat([c[None], x])[torch.where(offset >= d, back, 0)]  # (M, C) inputs at t - d
            x = _causal_conv(conv, older, x)  # (M, H)
            c = _causal_conv(conv, c, c)
            mean, var = norm.statistics(torch.cat([c.expand(int(real[:, 0].sum()), -1), x[counted]]))
            x = torch.tanh(norm.normalize(x, mean, var))
            c = torch.tanh(norm.normalize(c, mean, var))
        first, later = self.head(c), self.head(x)  # (V,) for every row's output 0, (M, V)
        rows = torch.cat([first.expand(int(real[:, 0].sum()), -1), later[counted]])  # (N, V): real targets
        loss = F.cross_entropy(rows, torch.cat([targets[:, 0][real[:, 0]], targets[:, 1:][keep][counted]]))
        logits = x.new_zeros(B, n + 1, self.vocab_size)
        logits[:, 0] = first
        logits[:, 1:][keep] = later
        return logits, loss  # (B, n + 1, V), ()

    @classmethod
    def from_mlp(cls, mlp: HierarchicalMLP) -> ConvWaveNet:
        """Exact transfer: each fusion Linear over [older, newer] becomes a kernel whose tap
        at t - d is the older half; embedding, BatchNorm (affine and running statistics)
        and output layer are copied. Same dtype and device as `mlp`."""
        conv = cls(mlp.vocab_size, **asdict(mlp.config), generator=torch.Generator()).to(mlp.head.weight)
        state = {k: linear_to_kernel(v) if k.startswith("fuse.") else v for k, v in mlp.state_dict().items()}
        conv.load_state_dict(state)
        return conv.train(mlp.training)

    def to_mlp(self) -> HierarchicalMLP:
        """The inverse transfer: the per-window model with the same function."""
        mlp = HierarchicalMLP(self.vocab_size, **asdict(self.config), generator=torch.Generator())
        mlp = mlp.to(self.head.weight)
        state = {k: kernel_to_linear(v) if k.startswith("fuse.") else v for k, v in self.state_dict().items()}
        mlp.load_state_dict(state)
        return mlp.train(self.training)

    def boundary_states(self) -> list[torch.Tensor]:
        """Eval mode: [input of layer 0, input of layer 1, ..., top hidden] at a position
        whose receptive field holds only boundary tokens; each a (C_l,) vector."""
        c = self.wte.weight[0]
        states = [c]
        for conv, norm in zip(self.fuse, self.norm):
            c = _causal_conv(conv, c, c)
            c = torch.tanh(norm.normalize(c, norm.running_mean, norm.running_var))
            states.append(c)
        return states

    def new_cache(self, batch_size: int) -> ConvCache:
        return ConvCache(self, batch_size)

    def step(self, ix: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        """Cached generation: feed one new id per row, ix (B,), get the next logits (B, V).
        Costs one position per layer (Fast WaveNet, Paine et al. 2016). Eval mode."""
        x = self.wte(ix)  # (B, C)
        slot = cache.t
        for conv, queue, norm in zip(self.fuse, cache.queues, self.norm):
            s = slot % queue.shape[0]  # this queue holds the last `dilation` inputs
            h = _causal_conv(conv, queue[s], x)  # (B, H): taps at t - d and t
            queue[s] = x
            x = torch.tanh(norm.normalize(h, norm.running_mean, norm.running_var))
        cache.t += 1
        return self.head(x)


class ConvCache:
    """Inference state for `ConvWaveNet.step`, outside the model: per layer, a ring buffer
    (dilation, B, C_in) of its last `dilation` inputs, filled at first with the all-boundary
    state, so generation starts from an empty context. `logits` are those for that empty
    context. Valid while the model's weights do not change."""

    def __init__(self, model: ConvWaveNet, batch_size: int):
        with torch.no_grad():
            states = model.boundary_states()
            self.queues = [s.view(1, 1, -1).repeat(conv.dilation[0], batch_size, 1)
                           for s, conv in zip(states, model.fuse)]  # each (d, B, C_in)
            self.logits = model.head(states[-1]).expand(batch_size, -1)  # (B, V)
        self.t = 0  # real positions fed so far


def _causal_conv(conv: nn.Conv1d, older: torch.Tensor, newer: torch.Tensor) -> torch.Tensor:
    """A kernel-2 Conv1d at the positions of `newer`, channels last: tap 0 reads `older`
    (the inputs `dilation` positions back), tap 1 reads `newer`. (..., C) -> (..., H)."""
    out = F.linear(newer, conv.weight[:, :, 1])  # (..., H), contiguous
    # tap 0 accumulated into the same buffer by the GEMM itself (beta = 1): no extra pass
    out.view(-1, out.shape[-1]).addmm_(older.reshape(-1, older.shape[-1]), conv.weight[:, :, 0].t())
    return out


def _aligned_rows(x: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """x (B, P, H) -> the rows (N, H) of the positions that count: all, or where real."""
    return x.reshape(-1, x.shape[-1]) if real is None else x[real]


def linear_to_kernel(w: torch.Tensor) -> torch.Tensor:
    """A fusion Linear's weight (H, 2C) over [older half, newer half] -> a Conv1d kernel
    (H, C, 2) whose tap 0 (at t - d) takes the older half and tap 1 (at t) the newer."""
    H, C2 = w.shape
    return w.view(H, 2, C2 // 2).permute(0, 2, 1).contiguous()


def kernel_to_linear(k: torch.Tensor) -> torch.Tensor:
    """The inverse of linear_to_kernel: (H, C, 2) -> (H, 2C)."""
    H, C, _ = k.shape
    return k.permute(0, 2, 1).reshape(H, 2 * C)


def _lecture_init_(model, generator: torch.Generator | None) -> None:
    """The lecture's init, shared by both models so that they start from the same draws:
    embedding randn; each fusion Linear randn / sqrt(fan_in), drawn as (fan_in, fan_out);
    the output layer the same, then scaled by 0.1, bias zero; BatchNorm gamma 1, beta 0."""
    with torch.no_grad():
        model.wte.weight.copy_(torch.randn(model.wte.weight.shape, generator=generator))
        for layer in model.fuse:
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(lecture_linear_weight(layer.in_features, layer.out_features, generator))
            else:  # Conv1d, kernel 2
                w = lecture_linear_weight(2 * layer.in_channels, layer.out_channels, generator)
                layer.weight.copy_(linear_to_kernel(w))
        H, V = model.head.in_features, model.head.out_features
        model.head.weight.copy_(lecture_linear_weight(H, V, generator) * 0.1)
        model.head.bias.zero_()


MODELS = {"mlp": HierarchicalMLP, "conv": ConvWaveNet, "wavenet": WaveNet}


def build_model(config, vocab_size: int | None = None, generator: torch.Generator | None = None) -> nn.Module:
    """A fresh model from its config (`MLPConfig`, `ConvConfig`, `WaveNetConfig`) and vocabulary size,
    or from a checkpoint's record of both (a dict, see `config.model_record`)."""
    if isinstance(config, dict):
        config, vocab_size = config_from_record(config)
    if vocab_size is None:
        raise WavenetError("build_model needs the vocabulary size", param="vocab_size")
    return MODELS[config.kind](vocab_size, **asdict(config), generator=generator)
