"""Sampling names, batched over many names at once, from an explicit torch.Generator.

A "stepper" holds the context of every name being generated and returns the next-character
logits; `generate` draws from them (temperature, top-k) and feeds the draws back. The MLP
steps on its sliding window; every other model either recomputes the whole prefix or, with
its cache, computes one new position per layer: the convolutions' ring buffers (Fast
WaveNet, Paine et al. 2016), the recurrent peers' state, the Transformer's keys and values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .config import PEERS
from .errors import WavenetError


class WindowStepper:
    """Any model on the last block_size ids (the lecture's sampling, batched)."""

    def __init__(self, model, num: int, device):
        self.model = model
        self.context = torch.zeros(num, model.block_size, dtype=torch.long, device=device)  # (B, block)

    def push(self, ix: torch.Tensor) -> None:
        self.context = torch.cat([self.context[:, 1:], ix[:, None]], dim=1)

    def logits(self) -> torch.Tensor:
        logits = self.model(self.context)[0]  # (B, V), or (B, 1, V) from the conv
        return logits if logits.dim() == 2 else logits[:, -1]


class FullStepper:
    """The model recomputing every position of the growing prefix at each step."""

    def __init__(self, model, num: int, device):
        self.model = model
        self.seq = torch.zeros(num, model.block_size, dtype=torch.long, device=device)  # (B, block + t)

    def push(self, ix: torch.Tensor) -> None:
        self.seq = torch.cat([self.seq, ix[:, None]], dim=1)

    def logits(self) -> torch.Tensor:
        return self.model(self.seq)[0][:, -1]  # (B, V): the prediction after the last id


class CachedStepper:
    """A model with its cache (`model.new_cache`): one new position per layer per step."""

    def __init__(self, model, num: int, device):
        self.model, self.cache = model, model.new_cache(num)
        self._logits = self.cache.logits

    def push(self, ix: torch.Tensor) -> None:
        self._logits = self.model.step(ix, self.cache)

    def logits(self) -> torch.Tensor:
        return self._logits


STEPPERS = {"window": WindowStepper, "full": FullStepper, "cached": CachedStepper}


def make_stepper(model, num: int, device, method: str = "auto"):
    """'auto': the MLP on its window, every other model with its cache. 'window' works for
    the models with a receptive field (mlp, conv, wavenet: a conv on exactly block_size
    ids); 'full' and 'cached' for every model but the MLP; an ensemble of several kinds
    samples with its members' caches only."""
    if method == "auto":
        method = "window" if model.kind == "mlp" else "cached"
    windowless = model.kind in PEERS  # no receptive field: a window of block_size ids is not the model
    if method not in STEPPERS or (method != "window" and model.kind == "mlp") or (method == "window"
                                                                                  and windowless) or (
            model.kind == "mixed" and method != "cached"):  # members of several kinds: each its cache
        raise WavenetError(f"sampling method '{method}' is not available for a '{model.kind}' model")
    return STEPPERS[method](model, num, device)


def check_sampling(vocab_size: int, num: int, temperature: float, top_k: int | None) -> None:
    """`generate`'s arguments, checked before any work, each error naming its parameter."""
    if not num >= 1:
        raise WavenetError(f"num must be at least 1, got {num}", param="num")
    if not 0 < temperature < float("inf"):  # NaN fails both comparisons
        raise WavenetError(f"temperature must be a positive number, got {temperature}", param="temperature")
    if top_k is not None and not 1 <= top_k <= vocab_size:
        raise WavenetError(f"top_k must be between 1 and the vocabulary size {vocab_size}, got {top_k}",
                           param="top_k")


@torch.no_grad()
def generate(model, num: int, *, generator: torch.Generator | None = None, temperature: float = 1.0,
             top_k: int | None = None, prefix: Sequence[int] = (), max_new_tokens: int = 100,
             method: str = "auto", device="cpu") -> list[list[int]]:
    """Sample `num` names; each is returned as its ids (prefix included, final boundary
    excluded). A name that reaches max_new_tokens without ending is cut there, as is one
    that fills a Transformer's n_positions."""
    check_sampling(model.vocab_size, num, temperature, top_k)
    positions = getattr(model, "n_positions", None)
    if positions is not None:  # the boundary id, the prefix and the draws fed back take a position each
        if len(prefix) >= positions:
            raise WavenetError(f"prefix: {len(prefix)} characters fill the model's n_positions {positions}",
                               param="prefix")
        max_new_tokens = min(max_new_tokens, positions - len(prefix))
    model.eval()
    stepper = make_stepper(model, num, device, method)
    for ix in prefix:
        stepper.push(torch.full((num,), ix, dtype=torch.long, device=device))
    draws = []
    done = torch.zeros(num, dtype=torch.bool)
    for i in range(max_new_tokens):
        logits = stepper.logits().float().cpu() / temperature  # (B, V); draws on the CPU
        if top_k is not None:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        if not torch.isfinite(probs).all():
            raise WavenetError("the model gives non-finite probabilities (a diverged checkpoint?)")
        ix = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
        draws.append(ix)
        done |= ix == 0
        if done.all() or i == max_new_tokens - 1:
            break
        stepper.push(ix.to(device))
    out = []
    for row in torch.stack(draws, dim=1).tolist():
        end = row.index(0) if 0 in row else len(row)
        out.append(list(prefix) + row[:end])
    return out


def novelty(name: str, train: set, heldout: set) -> str:
    """Where a sample stands, as makemore reports it: 'train', 'val/test' or 'new'."""
    return "train" if name in train else "val/test" if name in heldout else "new"
