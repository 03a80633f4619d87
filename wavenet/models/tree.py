"""The lecture's tree, twice: `HierarchicalMLP` over one window per target, and `ConvWaveNet`,
the same function as dilated causal convolutions over whole names.

`HierarchicalMLP` is the final network of makemore part 5: characters are embedded, then
fused in pairs, level by level (FlattenConsecutive(2) -> Linear -> BatchNorm -> Tanh), so 8
characters of context take 3 levels. It sees one window per target.

`ConvWaveNet` is that tree read as what it is, a WaveNet (van den Oord et al. 2016): level i
fuses two vectors 2**i positions apart, so it is a Conv1d with kernel 2 and dilation 2**i,
run over a whole padded name so that one pass predicts every position.
`ConvWaveNet.from_mlp` carries the weights over exactly; tests/test_equivalence.py proves
the two compute the same function (docs/tree-to-convolutions.md derives it).

Both call one layer body, `layer(level, pair)`: the pair [older | newer] of each position ->
tanh(BatchNorm(W pair)). The MLP's pairs are neighbours in its window; the conv's are taken
d positions apart, from padded rows (the reference), from packed rows (evaluation) or from
its cache (generation). Training on packed names runs the same arithmetic written out with
its backward pass by hand (tree_fused.py), tested equal to the reference.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..batches import PackedNames
from ..config import ConvConfig, MLPConfig, TreeConfig, check_block_size
from ..layers import BatchNorm, kernel_matrix, lecture_linear_weight, lm_loss, packed_loss, tap_major_conv
from .cache import RingCache
from .tree_fused import fused_forward


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

    def layer(self, level: int, pair: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
        """Level `level` of the tree, for every path: pair (..., 2C), each position's inputs
        [older | newer] -> tanh(BatchNorm(W pair)) (..., H). In training, BatchNorm's
        statistics come from the rows `counted` selects (a mask over the leading dims; None:
        every row); in eval, from its running buffers."""
        h = F.linear(pair, kernel_matrix(self.fuse[level].weight))  # (..., H)
        norm = self.norm[level]
        rows = None
        if norm.training:
            rows = h.reshape(-1, h.shape[-1]) if counted is None else h[counted]  # (N, H)
        mean, var = norm.statistics(rows)
        return torch.tanh(norm.normalize(h, mean, var))


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
        for level in range(len(self.fuse)):
            B, T, C = x.shape
            # FlattenConsecutive(2): pair (older, newer) side by side, without ever squeezing;
            # BatchNorm over the batch *and* the groups, as the lecture's
            x = self.layer(level, x.reshape(B, T // 2, 2 * C))  # (B, T/2, H)
        logits = self.head(x[:, 0])  # (B, 1, H) -> (B, V)
        return logits, lm_loss(logits, targets)


class ConvWaveNet(_Tree):
    """The same tree as a stack of dilated causal convolutions, run over whole sequences.

    Level i of the tree fuses two vectors 2**i positions apart, so it is a Conv1d with
    kernel 2 and dilation 2**i; the receptive field is 1 + (1 + 2 + ... + block/2) =
    block_size. The weights are `nn.Conv1d` kernels (H, C, 2), stored tap-major so that
    [tap at t - d | tap at t] is one (H, 2C) matrix (layers.tap_major_conv); one layout,
    channels last, runs through every path.

    Three paths, one function:
    - `model(X, Y)` on `pad_names` rows, idx (B, T), T >= block_size -> logits
      (B, T - block_size + 1, V), where output j is the prediction from
      idx[:, j : j + block_size]; targets use -1 for padding. The readable reference.
    - `model(PackedNames)` -> (logits per packed row (R, V), loss): whole names with no
      prefix and no padding computed; in training the hand-written step (tree_fused.py, whose
      logits are log-probabilities), in eval the layer body on the packed rows.
    - `step(ix, cache)`: generation, one position per layer.

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
        """The layers' dilations, 1, 2, ..., block_size / 2 (what `batches.pack` indexes)."""
        return [conv.dilation[0] for conv in self.fuse]

    @property
    def receptive_field(self) -> int:
        return 1 + sum(self.dilations)

    def forward(self, idx, targets: torch.Tensor | None = None):
        if isinstance(idx, PackedNames):
            return self._forward_packed(idx)
        B, T = idx.shape
        if T < self.block_size:
            raise ValueError(f"ConvWaveNet needs at least {self.block_size} ids per row, got {T}")
        P = T - self.block_size + 1  # number of outputs: the last P positions
        real = None if targets is None else targets != -1  # (B, P): outputs that count in BatchNorm
        x = self.wte(idx)  # (B, T, C)
        for level, d in enumerate(self.dilations):
            pair = torch.cat([x[:, :-d], x[:, d:]], -1)  # (B, T - d, 2C): a valid causal conv
            counted = None
            if self.training:  # the positions aligned with the outputs (the last P), where real
                counted = torch.zeros(pair.shape[:2], dtype=torch.bool, device=idx.device)
                counted[:, -P:] = True if real is None else real
            x = self.layer(level, pair, counted)  # (B, T - d, H)
        logits = self.head(x)  # (B, P, V)
        return logits, lm_loss(logits, targets)

    def _forward_packed(self, batch: PackedNames):
        if self.training:
            return fused_forward(self, batch)
        x = self.wte(batch.ids)  # (R, C)
        for level, pairs in enumerate(batch.pairs):  # each row's [older | newer], one gather
            x = self.layer(level, x.index_select(0, pairs).view(len(batch.ids), -1))  # (R, H)
        logits = self.head(x)  # (R, V)
        return logits, packed_loss(logits, batch)

    def boundary_states(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Eval mode, at a position whose receptive field holds only boundary tokens: each
        layer's input (C_l,), and the logits (V,) there."""
        c, inputs = self.wte.weight[0], []
        for level in range(len(self.fuse)):
            inputs.append(c)
            c = self.layer(level, torch.cat([c, c]))
        return inputs, self.head(c)

    def new_cache(self, batch_size: int) -> RingCache:
        return RingCache(self, batch_size)

    def step(self, ix: torch.Tensor, cache: RingCache) -> torch.Tensor:
        """Cached generation: feed one new id per row, ix (B,), get the next logits (B, V).
        Costs one position per layer (Fast WaveNet, Paine et al. 2016). Eval mode."""
        x = self.wte(ix)  # (B, C)
        for level in range(len(self.fuse)):
            x = self.layer(level, cache.pair(level, x))  # (B, H)
        cache.advance()
        return self.head(x)

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


ConvCache = RingCache  # its name before the two models' caches became one


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
