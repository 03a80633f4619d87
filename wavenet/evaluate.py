"""Loss over a whole split, in eval mode (BatchNorm on its running statistics).

The MLP sees every window of the split (the lecture's `split_loss`), the convolution sees
whole names; both give the mean cross-entropy over the same sum(len(w) + 1) targets.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from .data import Vocab, build_windows, length_batches, pad_names


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
def split_loss(model, words: Sequence[str], vocab: Vocab, device="cpu", batches=None) -> float:
    """Mean cross-entropy per target over all of `words`, in eval mode. `batches`: the
    `eval_batches` of those words, when the caller keeps them for repeated evaluation."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    try:
        for X, Y in batches if batches is not None else eval_batches(model, words, vocab):
            logits, _ = model(X.to(device))
            Y = Y.to(device)
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)).double(), Y.reshape(-1),
                                     ignore_index=-1, reduction="sum").cpu()
            count += int((Y != -1).sum())
    finally:
        model.train(was_training)
    return (total / count).item()
