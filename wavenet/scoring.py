"""How plausible is each string: per-item log-likelihood under a trained model.

`score(model, vocab, words)` gives each word its total log-likelihood in nats over its
targets (its characters, then the end), nats per character and perplexity, the way a
language-model toolkit's per-sentence query does. The words go through the batches
evaluation uses (`batches.indexed_eval_batches`: bounded in positions and logits), so the
per-word losses are the split loss's, taken apart: summed over a split they give
`split_loss` times its target count. A word the model cannot score (a character outside its
vocabulary, an empty line, a line longer than a transformer reads) gets a message in
`error` instead of numbers. `wavenet score` (commands.py) reads a file or the standard input
in chunks and prints one row per line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .batches import EVAL_POSITIONS, indexed_eval_batches
from .data import Vocab
from .evaluate import batch_nll, target_nll
from .models.ensemble import Ensemble


@dataclass(frozen=True)
class WordScore:
    """One word's score. `log_likelihood`: the sum over its targets (len(word) + 1: each
    character, then the end) of log p(target | what precedes it), in nats, <= 0; None,
    with `error` saying why, for a word the model cannot score."""

    word: str
    log_likelihood: float | None
    targets: int
    error: str | None = None

    @property
    def nats_per_char(self) -> float | None:
        """Mean loss per target (the cross-entropy `split_loss` reports, for one word)."""
        return None if self.log_likelihood is None else -self.log_likelihood / self.targets

    @property
    def perplexity(self) -> float | None:
        return None if self.log_likelihood is None else math.exp(self.nats_per_char)


def unscorable(model, vocab: Vocab, word: str) -> str | None:
    """Why `model` cannot score `word`, or None when it can."""
    if not word:
        return "empty: nothing to score"
    unknown = vocab.unknown(word)
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        return f"not in the model's vocabulary: {shown}"
    positions = getattr(model, "n_positions", None)  # a transformer's, or an ensemble holding one
    if positions is not None and len(word) + 1 > positions:
        return (f"{len(word):,} characters, more than the {positions - 1:,} this "
                f"{'transformer' if model.kind == 'transformer' else 'ensemble'} reads")
    return None


@torch.no_grad()
def score(model, vocab: Vocab, words: Sequence[str], device=None,
          max_positions: int = EVAL_POSITIONS) -> list[WordScore]:
    """Each word's `WordScore`, in order, in eval mode (the model's mode is restored).
    `device`: where the model is (default: where its weights are). Every model kind."""
    if device is None:
        device = next(model.parameters()).device
    errors = [unscorable(model, vocab, w) for w in words]
    good = [i for i, e in enumerate(errors) if e is None]
    totals = torch.zeros(len(good), dtype=torch.float64)
    if isinstance(model, Ensemble):  # target by target, word after word (evaluate.target_nll)
        kept = [words[i] for i in good]
        word = torch.arange(len(kept)).repeat_interleave(torch.tensor([len(w) + 1 for w in kept],
                                                                      dtype=torch.long))
        totals.index_add_(0, word, target_nll(model, kept, vocab, device))
    else:
        was_training = model.training
        model.eval()
        try:
            for X, Y, word in indexed_eval_batches(model, [words[i] for i in good], vocab, max_positions):
                totals.index_add_(0, word, batch_nll(model, X, Y, device).cpu())
        finally:
            model.train(was_training)
    out, scored = [], iter(totals.tolist())
    for w, e in zip(words, errors):
        ll = None if e is not None else -next(scored)
        out.append(WordScore(w, ll, len(w) + 1, e))
    return out



# ----------------------------------------------------------------------------- `wavenet score`

CHUNK = 4_096  # lines scored at a time: memory stays bounded by this, whatever the input's size
COLUMNS = ("line", "log_likelihood", "targets", "nats_per_char", "perplexity", "error", "text")


def score_lines(model, vocab: Vocab, lines, device) -> list[tuple[int, WordScore]]:
    """(line number, score) for each of `lines` (`data.read_lines`' tuples): a line that
    could not be read is scored as its error."""
    lines = list(lines)
    scored = iter(score(model, vocab, [t for _, t, e, _ in lines if e is None], device))
    return [(n, next(scored) if e is None else WordScore("", None, 0, e)) for n, _, e, _ in lines]


def format_row(lineno: int, s: WordScore, fmt: str) -> str:
    """One output line: tab-separated COLUMNS (the text last, so a tab inside it cannot shift
    a column; numbers empty where there is an error), or a JSON object."""
    if fmt == "json":
        return json.dumps(dict(line=lineno, text=s.word, log_likelihood=s.log_likelihood,
                               targets=s.targets if s.error is None else None,
                               nats_per_char=s.nats_per_char, perplexity=s.perplexity, error=s.error),
                          ensure_ascii=False)
    if s.error is not None:
        return f"{lineno}\t\t\t\t\t{s.error}\t{s.word}"
    return (f"{lineno}\t{s.log_likelihood:.6f}\t{s.targets}\t{s.nats_per_char:.6f}\t{s.perplexity:.4f}"
            f"\t\t{s.word}")


def rank_key(item: tuple[int, WordScore]):
    """--sort: likeliest per character first; lines that could not be scored last, in order."""
    lineno, s = item
    return (s.error is not None, s.nats_per_char if s.error is None else 0.0, lineno)
