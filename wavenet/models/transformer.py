"""`Transformer`: a decoder-only Transformer, the attention peer of the convolutional models.

    x = drop(token embedding + position embedding)            positions 0 .. n_positions - 1
    each block (GPT-2's pre-LayerNorm block, Radford et al. 2019):
        x = x + drop(W_o attention(LN(x)))                    causal, n_head heads
        x = x + drop(W_2 gelu(W_1 LN(x)))                     4 x n_embd hidden
    logits = W_head LN(x) + b

Like the recurrent peers it reads the whole name so far: a `pad_names` row opens with one
boundary id (`block_size` 1), output j reads X[:, :j + 1] and is scored against Y[:, j].
Right padding sits after every real id and the attention is causal, so padding cannot
change a real output; the padded rows are the reference and the training path. `step`
generates with a key/value cache (`KVCache`): one new position per call, attending to the
cached keys and values of every earlier position.

The init is GPT-2's: every matrix N(0, 0.02), the projections back into the residual
stream N(0, 0.02 / sqrt(2 n_layers)), biases zero, LayerNorm gains one.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import TransformerConfig
from ..layers import lm_loss
from .wavenet import Dropout


class Block(nn.Module):
    def __init__(self, channels: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.ln_2 = nn.LayerNorm(channels)
        self.fc = nn.Linear(channels, 4 * channels)
        self.fc_proj = nn.Linear(4 * channels, channels)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). With `cache`: x is the one new position (T = 1) after
        the cached ones; its key and value join the cache."""
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.qkv(self.ln_1(x)).split(C, -1))  # each (B, H, T, D)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.drop.p if self.training else 0.0)
        else:  # the new position attends to every cached one and to itself: nothing to mask
            k, v = cache.extend(layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))
        return x + self.drop(self.fc_proj(F.gelu(self.fc(self.ln_2(x)))))


class Transformer(nn.Module):
    """See the module docstring. idx (B, T), T <= n_positions -> logits (B, T, V): output j
    reads idx[:, :j + 1]."""

    Config = TransformerConfig
    kind = "transformer"
    block_size = 1  # the boundary ids that open a `pad_names` row

    def __init__(self, vocab_size: int, n_embd: int = TransformerConfig.n_embd,
                 n_head: int = TransformerConfig.n_head, n_layers: int = TransformerConfig.n_layers,
                 n_positions: int = TransformerConfig.n_positions, dropout: float = TransformerConfig.dropout,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.config = TransformerConfig(n_embd=n_embd, n_head=n_head, n_layers=n_layers,
                                        n_positions=n_positions, dropout=dropout)  # checks them
        self.vocab_size, self.n_positions = vocab_size, n_positions
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(n_positions, n_embd)
        self.drop = Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size)
        _init_(self, generator)

    def dropouts(self) -> list[Dropout]:
        """The dropouts that config.dropout sets, attention's included (a recipe's
        `final_dropout` ramps them)."""
        return [self.drop, *(block.drop for block in self.blocks)]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, T) ids, a `pad_names` row or any prefix of one; targets (B, T), -1 ignored
        -> (logits (B, T, V), mean loss over real targets, or None)."""
        logits = self._run(idx, None)
        return logits, lm_loss(logits, targets)

    def _run(self, idx: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        B, T = idx.shape
        start = 0 if cache is None else cache.t
        if start + T > self.n_positions:
            raise ValueError(f"a transformer with n_positions {self.n_positions} reads at most that many "
                             f"ids, got {start + T}")
        x = self.drop(self.wte(idx) + self.wpe.weight[start:start + T])
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.t += T
        return self.head(self.ln_f(x))

    # ------------------------------------------------------------------ generation

    def new_cache(self, batch_size: int) -> KVCache:
        return KVCache(self, batch_size)

    def step(self, ix: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Cached generation: one new id per row, ix (B,) -> next logits (B, V). Eval mode."""
        return self._run(ix[:, None], cache)[:, 0]


class KVCache:
    """Each block's keys and values (B, H, n_positions, D) of the positions fed so far, `t`
    of them, starting from the boundary id that opens every name; `logits` (B, V): the
    next-id logits there."""

    def __init__(self, model: Transformer, batch_size: int):
        C, H = model.config.n_embd, model.config.n_head
        shape = (batch_size, H, model.n_positions, C // H)
        weight = model.head.weight
        self.keys = [weight.new_zeros(shape) for _ in model.blocks]
        self.values = [weight.new_zeros(shape) for _ in model.blocks]
        self.t = 0
        with torch.no_grad():
            start = torch.zeros(batch_size, 1, dtype=torch.long, device=weight.device)
            self.logits = model._run(start, self)[:, 0]

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new position's k, v (B, H, 1, D) after the cached ones; return the keys
        and values of every position so far."""
        end = self.t + 1
        self.keys[layer][:, :, self.t:end] = k
        self.values[layer][:, :, self.t:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


def parameter_count(config: TransformerConfig, vocab_size: int) -> int:
    """The number of parameters, from the config alone (tested against the model)."""
    C = config.n_embd
    block = 2 * 2 * C + (C + 1) * 3 * C + (C + 1) * C + (C + 1) * 4 * C + (4 * C + 1) * C
    return (vocab_size + config.n_positions) * C + config.n_layers * block + 2 * C + (C + 1) * vocab_size


def _init_(model: Transformer, generator: torch.Generator | None) -> None:
    residual = 0.02 / (2 * len(model.blocks)) ** 0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:  # a LayerNorm's gain
                p.fill_(1.0)
            else:
                std = residual if name.endswith(("proj.weight", "fc_proj.weight")) else 0.02
                p.copy_(torch.randn(p.shape, generator=generator) * std)
