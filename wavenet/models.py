"""The models. Every model has one contract: `forward(idx, targets=None) -> (logits, loss)`.

`HierarchicalMLP` is the final network of makemore part 5: characters are embedded, then
fused in pairs, level by level (FlattenConsecutive(2) -> Linear -> BatchNorm -> Tanh), so 8
characters of context take 3 levels. It sees one window per target.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .errors import WavenetError
from .layers import BatchNorm, lecture_linear_weight, lm_loss


def check_block_size(block_size: int) -> int:
    """Number of fusion levels, log2(block_size); block_size must be a power of two >= 2."""
    if not isinstance(block_size, int) or block_size < 2 or block_size & (block_size - 1):
        raise WavenetError(f"--block-size must be a power of two >= 2 (2, 4, 8, 16, ...), got {block_size}")
    return int(math.log2(block_size))


class HierarchicalMLP(nn.Module):
    """The lecture's hierarchical model, exactly: 76,579 parameters at the defaults.

    idx (B, block_size) -> logits (B, vocab_size). `generator` seeds the lecture's
    initialisation (embedding, then each Linear, in order, from one stream of randn).
    """

    kind = "mlp"

    def __init__(self, vocab_size: int, block_size: int = 8, n_embd: int = 24, n_hidden: int = 128,
                 generator: torch.Generator | None = None):
        super().__init__()
        n_levels = check_block_size(block_size)
        self.config = dict(kind=self.kind, vocab_size=vocab_size, block_size=block_size,
                           n_embd=n_embd, n_hidden=n_hidden)
        self.vocab_size, self.block_size = vocab_size, block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        widths = [n_embd] + [n_hidden] * n_levels
        self.fuse = nn.ModuleList(nn.Linear(2 * widths[i], n_hidden, bias=False) for i in range(n_levels))
        self.norm = nn.ModuleList(BatchNorm(n_hidden) for _ in range(n_levels))
        self.head = nn.Linear(n_hidden, vocab_size)
        _lecture_init_(self, generator)

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
            x = torch.tanh(norm.normalize(x, mean, var, dim=-1))
        logits = self.head(x[:, 0])  # (B, 1, H) -> (B, V)
        return logits, lm_loss(logits, targets)


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


MODELS = {"mlp": HierarchicalMLP}


def build_model(config: dict, generator: torch.Generator | None = None) -> nn.Module:
    """Build a model from its `config` dict (as stored in checkpoints)."""
    config = dict(config)
    kind = config.pop("kind")
    if kind not in MODELS:
        raise WavenetError(f"unknown model kind '{kind}' (choose from {', '.join(MODELS)})")
    return MODELS[kind](**config, generator=generator)
