"""Loss over a whole split, in eval mode (BatchNorm on its running statistics).

The MLP sees every window of the split (the lecture's `split_loss`), the convolution sees
whole names; both give the mean cross-entropy over the same sum(len(w) + 1) targets.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from .data import Vocab, build_windows, pad_names


def eval_batches(model, words: Sequence[str], vocab: Vocab, max_targets: int = 32_768
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches covering every target of `words` once, in the layout the model takes."""
    if model.kind == "mlp":
        X, Y = build_windows(words, vocab, model.block_size)
        for i in range(0, len(X), max_targets):
            yield X[i:i + max_targets], Y[i:i + max_targets]
    else:
        # Names sorted by length, so a batch pads little; about max_targets targets each.
        ordered = sorted(words, key=len)
        i = 0
        while i < len(ordered):
            j = min(len(ordered), i + max(1, max_targets // (len(ordered[i]) + 1)))
            yield pad_names(ordered[i:j], vocab, model.block_size)
            i = j


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
