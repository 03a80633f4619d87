"""Ensemble: trained models as one model whose next-character distribution is the mean of
theirs.

    p(next | context) = (1 / N) sum_i p_i(next | context)

Members of one kind and layout (kind, block size, dilations: `wavenet train --ensemble N`
trains such, one per seed) take the same batches, so `forward` runs each on the batch and
returns log p as the logits: softmax(log p) is p again, and every consumer of logits takes
the ensemble as it takes one model. Members of several kinds (`wavenet ensemble` joins any
runs on one data file: a WaveNet and an LSTM, say) share no batch layout: their ensemble
("mixed") is scored target by target (`evaluate.target_nll`, which `split_loss` and
`scoring.score` use for every ensemble) and samples with each member's cache (`step`). An
ensemble is for inference: it is never trained as one.
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


def mean_of_probabilities(nll: list[torch.Tensor]) -> torch.Tensor:
    """-log of the mean of exp(-l) over the list: the ensemble's loss of each target from its
    members' losses of it, each (n,) in float64."""
    return -(torch.logsumexp(-torch.stack(nll), 0) - math.log(len(nll)))


def layout(model) -> tuple:
    """What decides a model's batches (batches.eval_batches): kind, block size, dilations."""
    return model.kind, model.block_size, tuple(getattr(model, "dilations", ()))


class EnsembleCache:
    """Each member's own cache; `logits`, the ensemble's next-id logits (B, V)."""

    def __init__(self, members, batch_size: int):
        self.caches = [m.new_cache(batch_size) for m in members]
        self.logits = mean_of_distributions([c.logits for c in self.caches])


class Ensemble(nn.Module):
    """members: trained models over one vocabulary, in eval mode (`model_from_checkpoint`).
    `kind` is theirs when they share a layout, else "mixed" (then every member needs a cache:
    not the MLP)."""

    def __init__(self, members):
        super().__init__()
        members = list(members)
        if not members:
            raise WavenetError("an ensemble needs at least one member")
        first = members[0]
        if any(m.vocab_size != first.vocab_size for m in members):
            raise WavenetError("ensemble members must share one vocabulary")
        self.members = nn.ModuleList(members)
        self.vocab_size = first.vocab_size
        self.uniform = all(layout(m) == layout(first) for m in members)
        if self.uniform:
            self.kind, self.block_size = first.kind, first.block_size
            for name in ("dilations", "receptive_field"):  # what batches and the window stepper ask
                if hasattr(first, name):
                    setattr(self, name, getattr(first, name))
        else:
            if any(not hasattr(m, "new_cache") for m in members):
                raise WavenetError("an ensemble of several kinds needs members that sample with a cache "
                                   "(not mlp)")
            self.kind, self.block_size = "mixed", max(m.block_size for m in members)
        positions = [m.n_positions for m in members if hasattr(m, "n_positions")]
        if positions:
            self.n_positions = min(positions)  # the longest sequence every member reads

    def __len__(self) -> int:
        return len(self.members)

    @property
    def kinds(self) -> list[str]:
        return [m.kind for m in self.members]

    def forward(self, idx, targets: torch.Tensor | None = None):
        """Members of one layout: what one takes (padded rows, windows or a `PackedNames`
        batch) -> (log of the mean distribution, in a member's logits' shape; its mean loss
        over the real targets, or None)."""
        if not self.uniform:
            raise WavenetError(f"an ensemble of {', '.join(self.kinds)} has no one batch layout: score it "
                               "with split_loss or score, sample it with its cache")
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
        return f"kinds={'+'.join(self.kinds)}"
