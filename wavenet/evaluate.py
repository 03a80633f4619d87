"""Loss over a whole split, in eval mode (BatchNorm on its running statistics).

The MLP sees every window of the split (the lecture's `split_loss`), the convolutional models
see whole names, packed, and the peers whole names as `pad_names` rows; all give the mean
cross-entropy over the same sum(len(w) + 1) targets. The batches are `batches.eval_batches`:
bounded in positions and in logits, so memory does not grow with the split or the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import distributed
from .batches import PackedNames, eval_batches, indexed_eval_batches
from .data import Vocab

TRAIN_SAMPLE = 50_000  # names: above this, the reported train loss is over a seeded sample
LSE_CHUNK = 1 << 16     # logits converted to float64 at a time, for the log-sum-exp


def nll(logits: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits[rows[i]])[targets[i]] for each i, in float64 (n,): logits (R, V)
    of any float dtype. The log-sum-exp of each row is taken in float64 a chunk of rows at a
    time, so no float64 copy of all the logits is ever made."""
    chunk = max(1, LSE_CHUNK // logits.shape[-1])
    lse = torch.cat([torch.logsumexp(part.double(), -1) for part in logits.split(chunk)])  # (R,)
    return lse[rows] - logits[rows, targets].double()


def nll_sum(logits: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The sum of `nll`, in float64."""
    return nll(logits, rows, targets).sum()


def batch_nll(model, X, Y, device) -> torch.Tensor:
    """The loss (float64) of each real target of one `eval_batches` batch, in the batch's
    target order (`batches.indexed_eval_batches` names the word of each). Eval mode and
    no_grad are the caller's."""
    logits, _ = model(X.to(device))
    if isinstance(X, PackedNames):  # (R, V) per packed row; targets flat row * V + id
        V = logits.shape[-1]
        targets = X.targets.to(device)
        return nll(logits, targets // V, targets % V)
    # the MLP's windows: (B, V) and Y (B,); the peers' rows: (B, T, V) and Y (B, T)
    logits, Y = logits.reshape(-1, logits.shape[-1]), Y.to(device).reshape(-1)
    real = Y != -1
    return nll(logits, torch.nonzero(real)[:, 0], Y[real])


@torch.no_grad()
def target_nll(model, words: Sequence[str], vocab: Vocab, device="cpu") -> torch.Tensor:
    """The loss (float64, on the CPU) of every target of `words`, in one order for every
    kind: word by word, and in each word position by position (n = sum(len(w) + 1)). Eval
    mode. An ensemble's: the -log of its members' mean probability of each target, whatever
    their kinds (models/ensemble.py)."""
    from .models.ensemble import Ensemble, mean_of_probabilities
    if not words:
        return torch.zeros(0, dtype=torch.float64)
    if isinstance(model, Ensemble):
        return mean_of_probabilities([target_nll(m, words, vocab, device) for m in model.members])
    was_training = model.training
    model.eval()
    try:
        parts = [(word, batch_nll(model, X, Y, device).cpu())
                 for X, Y, word in indexed_eval_batches(model, words, vocab)]
    finally:
        model.train(was_training)
    word = torch.cat([w for w, _ in parts])
    nll = torch.cat([x for _, x in parts])
    return nll[torch.sort(word, stable=True).indices]  # each word's targets keep their order


@torch.no_grad()
def split_loss(model, words: Sequence[str], vocab: Vocab, device="cpu", batches=None,
               sharded: bool = False) -> float:
    """Mean cross-entropy per target over all of `words`, in eval mode. `batches`: the
    `eval_batches` of those words, when the caller keeps them for repeated evaluation.
    `sharded` (under torchrun, a collective: every rank must call it): each rank scores every
    N-th batch and the sums of losses and target counts are added up across ranks; `batches`
    then holds this rank's share already (`shard_batches`). An ensemble is scored target by
    target (`target_nll`): neither `batches` nor `sharded` applies to it."""
    from .models.ensemble import Ensemble
    if isinstance(model, Ensemble):  # target by target: its members may take different batches
        return target_nll(model, words, vocab, device).mean().item()
    group = distributed.active() if sharded else None
    if batches is None:
        batches = eval_batches(model, words, vocab)
        if group is not None:
            batches = shard_batches(batches)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for X, Y in batches:
            losses = batch_nll(model, X, Y, device)
            total += losses.sum()
            count += len(losses)
    finally:
        model.train(was_training)
    if group is not None:
        total, count = distributed.all_reduce_(torch.stack([total, count]))
    return (total / count).item()


def shard_batches(batches) -> list:
    """This rank's share of a split's evaluation batches: every N-th, from its rank on."""
    group = distributed.active()
    batches = list(batches)
    return batches if group is None else batches[group.rank::group.world_size]


def sample_for_loss(words: Sequence[str], limit: int | None = None, seed: int = 0) -> list[str]:
    """`words`, or a fixed seeded sample of `limit` (TRAIN_SAMPLE) of them, in their order,
    when there are more: the train loss of a big corpus is estimated at a cost that does not
    grow with the corpus (the caller says so); a split of up to `limit` names is scored whole."""
    limit = TRAIN_SAMPLE if limit is None else limit
    if len(words) <= limit:
        return list(words)
    g = torch.Generator().manual_seed(seed)
    return [words[i] for i in sorted(torch.randperm(len(words), generator=g)[:limit].tolist())]
