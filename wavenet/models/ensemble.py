"""Ensemble: several trained models of one architecture as one model whose next-character
distribution is the mean of theirs.

    p(next | context) = (1 / N) sum_i p_i(next | context)

Its `forward` and `step` return log p as the logits: softmax(log p) is p again, so every
consumer of logits (the split losses, sampling with temperature and top-k, scoring) takes an
ensemble as it takes one model. The members share one architecture (the same model config),
so they take the same batches (`batches.eval_batches` asks the ensemble for the members'
kind, block size and dilations) and differ only in their weights (`wavenet train --ensemble`
trains each from its own seed). An ensemble is for inference: it is never trained as one.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..batches import PackedNames
from ..errors import WavenetError
from ..layers import lm_loss, packed_loss


def mean_of_distributions(logits: list[torch.Tensor]) -> torch.Tensor:
    """The log of the mean of softmax(l) over the list, each (..., V), in their dtype: the
    log-sum-exp of the members' log-probabilities less log N, so no probability underflows."""
    logp = torch.stack([F.log_softmax(x, -1) for x in logits])  # (N, ..., V)
    return torch.logsumexp(logp, 0) - math.log(len(logits))


class EnsembleCache:
    """Each member's own cache; `logits`, the ensemble's next-id logits (B, V)."""

    def __init__(self, members, batch_size: int):
        self.caches = [m.new_cache(batch_size) for m in members]
        self.logits = mean_of_distributions([c.logits for c in self.caches]) if all(
            hasattr(c, "logits") for c in self.caches) else None


class Ensemble(nn.Module):
    """members: models of one kind and one config, in eval mode (`model_from_checkpoint`)."""

    def __init__(self, members):
        super().__init__()
        members = list(members)
        if not members:
            raise WavenetError("an ensemble needs at least one member", param="members")
        first = members[0]
        for m in members[1:]:
            if m.kind != first.kind or _config(m) != _config(first) or m.vocab_size != first.vocab_size:
                raise WavenetError("ensemble members must share one model config and vocabulary",
                                   param="members")
        self.members = nn.ModuleList(members)
        self.kind, self.vocab_size, self.block_size = first.kind, first.vocab_size, first.block_size
        for name in ("dilations", "n_positions", "receptive_field"):  # what batches and sampling ask
            if hasattr(first, name):
                setattr(self, name, getattr(first, name))
        self.config = getattr(first, "config", None)

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, idx, targets: torch.Tensor | None = None):
        """What one member takes (padded rows, windows or a `PackedNames` batch) -> (log of the
        mean distribution, in the members' logits' shape; its mean loss over the real targets,
        or None)."""
        logits = mean_of_distributions([m(idx)[0] for m in self.members])
        if isinstance(idx, PackedNames):
            return logits, packed_loss(logits, idx)
        return logits, lm_loss(logits, targets)

    def new_cache(self, batch_size: int) -> EnsembleCache:
        if not all(hasattr(m, "new_cache") for m in self.members):
            raise WavenetError(f"a '{self.kind}' model has no cache", param="method")
        return EnsembleCache(self.members, batch_size)

    def step(self, ix: torch.Tensor, cache: EnsembleCache) -> torch.Tensor:
        """Each member's cached step on ix (B,) -> the ensemble's next logits (B, V)."""
        cache.logits = mean_of_distributions([m.step(ix, c) for m, c in zip(self.members, cache.caches)])
        return cache.logits

    def extra_repr(self) -> str:
        return f"kind={self.kind}, members={len(self.members)}"


def _config(model):
    return getattr(model, "config", None)
