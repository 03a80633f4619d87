"""Loss over a whole split, in eval mode (BatchNorm on its running statistics).

The MLP sees every window of the split (the lecture's `split_loss`), the convolution sees
whole names; both give the mean cross-entropy over the same sum(len(w) + 1) targets.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from . import distributed
from .data import Vocab, build_windows, length_batches, pad_names

TRAIN_SAMPLE = 50_000  # names: above this, the reported train loss is over a seeded sample


def eval_batches(model, words: Sequence[str], vocab: Vocab, max_positions: int = 32_768
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches covering every target of `words` once, in the layout the model takes, each
    at most `max_positions` target positions, padding included: the MLP's windows in
    chunks, the conv's whole names grouped by length (`data.length_batches`)."""
    if model.kind == "mlp":
        X, Y = build_windows(words, vocab, model.block_size)
        for i in range(0, len(X), max_positions):
            yield X[i:i + max_positions], Y[i:i + max_positions]
    else:
        for group in length_batches(words, max_positions):
            yield pad_names(group, vocab, model.block_size)


@torch.no_grad()
def split_loss(model, words: Sequence[str], vocab: Vocab, device="cpu", batches=None,
               sharded: bool = False) -> float:
    """Mean cross-entropy per target over all of `words`, in eval mode. `batches`: the
    `eval_batches` of those words, when the caller keeps them for repeated evaluation.
    `sharded` (under torchrun, a collective: every rank must call it): each rank scores every
    N-th batch and the sums of losses and target counts are added up across ranks; `batches`
    then holds this rank's share already (`shard_batches`)."""
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
            logits, _ = model(X.to(device))
            Y = Y.to(device)
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)).double(), Y.reshape(-1),
                                     ignore_index=-1, reduction="sum")
            count += (Y != -1).sum()
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
