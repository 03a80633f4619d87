"""What a model is fed: every layout of the targets, and the sources that cut them into batches.

Two views of the same sum(len(w) + 1) targets of a list of words:
- windows (`build_windows`): the lecture's dataset, one (block_size,) window per target; the
  MLP's layout;
- whole names: `pad_names` rows (block_size boundary ids, the name, right padding), what the
  convolutional models' readable reference forward takes; and the same names packed
  (`pack`, `PackedNames`), their fast path for training and evaluation, where no boundary
  prefix and no padding is computed at all.

Batch sources: `WindowBatches` (random windows, the lecture's), `NameBatches` (shuffled
whole names, packed), both with a resume state; `make_batches` picks a model's. `eval_batches`
covers a split once, each batch bounded in positions and in logits (positions x vocabulary).

The packed layout. Row 0 stands for every name's boundary prefix: its receptive field holds
only boundary tokens, so at every layer it carries the one all-boundary state. Rows 1..M are
the names' characters, name after name. A kernel-2 layer of dilation d reads, for row r, the
pair (input d positions back, input at r): row r - d inside the same name, else row 0.
Output 0 of every name is read from row 0; the output after character k of a name from that
character's row. `weight[r]` counts the real targets read from row r, which is also that
row's weight in BatchNorm's statistics (the tree counts exactly the positions aligned with
real targets, models/tree.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import torch

from .config import PEERS
from .distributed import Group, share
from .errors import WavenetError

# --------------------------------------------------------------------------- windows and padded names


def build_windows(words: Sequence[str], vocab, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The lecture's dataset: for every target, the block_size ids before it.

    Returns X (N, block_size) and Y (N,), LongTensors, N = sum(len(w) + 1): the lecture's
    loop (context = [0] * block_size, slid one id at a time), computed with tensors, so a
    corpus of millions of lines costs the tensors and not millions of Python lists.
    """
    seq, first = window_starts(words, vocab, block_size)
    return seq.unfold(0, block_size, 1)[first], seq[first + block_size]  # unfold: views, no (N, block) index


def window_starts(words: Sequence[str], vocab, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows of `build_windows` without materialising them: (seq, first), where window
    i is seq[first[i] : first[i] + block_size] and its target seq[first[i] + block_size].
    seq holds each word as block_size boundary ids then its ids, word after word, and one
    last 0: (block_size + 1) ids per word less than the windows themselves."""
    ids, lengths = vocab.encode_all(words)
    seq = torch.zeros(len(ids) + block_size * len(lengths) + 1, dtype=torch.long)
    spans = lengths + block_size
    starts = torch.cumsum(spans, 0) - spans  # where each word's boundary prefix begins
    seq[torch.repeat_interleave(starts + block_size, lengths) + _ranges(lengths)] = ids
    # target j of a word (j = 0 .. len) reads seq[start + j : start + j + block_size]; its
    # target sits right after: the word's next id, or, after the last, the next prefix's 0
    return seq, torch.repeat_interleave(starts, lengths + 1) + _ranges(lengths + 1)


def _ranges(lengths: torch.Tensor) -> torch.Tensor:
    """0 .. n - 1 for each n in lengths, concatenated."""
    ends = torch.cumsum(lengths, 0)
    return torch.arange(int(ends[-1]) if len(ends) else 0) - torch.repeat_interleave(ends - lengths, lengths)


def pad_names(words: Sequence[str], vocab, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole words for the convolution's reference forward, one row per word in the given order.

    X (B, block_size + L): block_size boundary ids, the word's ids, then boundary ids as
    right padding up to the longest word (L letters). Y (B, L + 1): the word's ids, then the
    boundary id, then -1 (ignored) at padding. Output j of the model sees
    X[:, j : j + block_size] and is scored against Y[:, j].
    """
    ids, lengths = vocab.encode_all(words)
    B, L = len(words), int(lengths.max())
    X = torch.zeros(B, block_size + L, dtype=torch.long)
    Y = torch.full((B, L + 1), -1, dtype=torch.long)
    rows, cols = torch.repeat_interleave(torch.arange(B), lengths), _ranges(lengths)
    X[rows, block_size + cols] = ids
    Y[rows, cols] = ids
    Y[torch.arange(B), lengths] = 0
    return X, Y


# --------------------------------------------------------------------------- packed names


@dataclass
class PackedNames:
    """A batch of whole names, packed (see the module docstring). R = M + 1 rows.

    ids (R,): the id at each row (0 at row 0). pairs: one (2R,) index per layer, the
    interleaved [older, newer] rows each row reads. first_pairs: pairs[0] mapped to ids
    (layer 0 can read the embedding table directly). Per layer too, the same reads split by
    where the older input lies: reads_root (R,) float32, 1 for the rows whose older input is
    row 0 (row 0 itself, and rows fewer than d into their name), and for the rest,
    inner_rows (K,) and inner_older (K,): each row and the row d before it in its name (the
    fused step skips row 0's repeated arithmetic with them, `tree_fused.layer_way`).
    weight (R,): real targets per row;
    odd_rows: the rows whose weight is not 1 (row 0, rows without a target), odd_extra: their
    weight - 1 (the tree's hand-written backward pass treats every row as weight 1, then
    corrects these). targets (N,): flat indices row * V + target of every real target, in
    `pad_names` order (Y[Y != -1]: name by name, output 0 first). `n_names`, `n_targets`: for
    rates and reporting. n_group_targets: under torchrun, the real targets of the whole global
    batch, this share one of N (BatchNorm's count; None: summed across ranks when needed)."""

    ids: torch.Tensor
    pairs: list[torch.Tensor]
    first_pairs: torch.Tensor
    reads_root: list[torch.Tensor]
    inner_rows: list[torch.Tensor]
    inner_older: list[torch.Tensor]
    weight: torch.Tensor
    targets: torch.Tensor
    odd_rows: torch.Tensor
    odd_extra: torch.Tensor
    n_names: int
    n_targets: int
    n_group_targets: int | None = None

    def to(self, device) -> PackedNames:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device, non_blocking=True)
            elif isinstance(value, list):  # one index per layer
                moved[name] = [p.to(device, non_blocking=True) for p in value]
        return PackedNames(**moved)


def tree_dilations(block_size: int) -> list[int]:
    """The lecture's tree as convolutions: dilations 1, 2, ..., block_size / 2."""
    return [2**i for i in range(block_size.bit_length() - 1)]


def pack(chars: torch.Tensor, lengths: torch.Tensor, block_size: int, vocab_size: int,
         targets: torch.Tensor | None = None, dilations: Sequence[int] | None = None) -> PackedNames:
    """Pack names given as their characters' ids, concatenated (`chars`, (M,)), and their
    lengths (B,). `targets` (M + B,) overrides the natural targets (each name's characters
    then 0) in `pad_names` order, name by name; -1 drops a target, as in Y. Without
    `targets` every name needs at least one character; with them a name may have none
    (only its output 0). `dilations`: one pair index per layer of these dilations (the
    gated WaveNet's); by default the tree's (`tree_dilations(block_size)`).
    All of it is vectorised: a few dozen tensor operations per batch, no Python per name."""
    B, M = len(lengths), len(chars)
    starts = torch.cumsum(lengths, 0) - lengths  # where each name's characters begin in `chars`
    name_of = torch.repeat_interleave(torch.arange(B), lengths)  # (M,)
    offset = torch.arange(M) - starts[name_of]  # k: position of each character in its name
    rows = torch.arange(1, M + 1)
    is_first = torch.zeros(M + B, dtype=torch.bool)  # name b's targets: output 0, then one per character
    is_first[starts + torch.arange(B)] = True
    if targets is None:
        targets = torch.zeros(M + B, dtype=torch.long)  # each name's characters, then 0
        targets[~is_first] = torch.where(offset == lengths[name_of] - 1, 0, chars.roll(-1))
        targets[is_first] = chars[starts]
    flat = torch.empty(M + B, dtype=torch.long)  # row * V + target, in pad_names order
    flat[is_first] = targets[is_first]  # output 0 reads row 0
    flat[~is_first] = rows * vocab_size + targets[~is_first]
    real = targets != -1
    weight = torch.zeros(M + 1).index_add_(0, flat[real] // vocab_size, torch.ones(int(real.sum())))
    flat = flat[real]
    ids = torch.cat([torch.zeros(1, dtype=torch.long), chars])
    dilations = list(dilations or tree_dilations(block_size))
    by_dilation = {}
    for d in dict.fromkeys(dilations):
        inner = offset >= d
        older = torch.where(inner, rows - d, 0)
        pair = torch.stack([torch.cat([torch.zeros(1, dtype=torch.long), older]), torch.arange(M + 1)], 1)
        reads_root = torch.cat([torch.ones(1), (~inner).float()])
        by_dilation[d] = pair.reshape(-1), reads_root, rows[inner], rows[inner] - d
    # layers of one dilation share their indices
    pairs, reads_root, inner_rows, inner_older = ([by_dilation[d][i] for d in dilations] for i in range(4))
    odd_rows = torch.nonzero(weight != 1)[:, 0]
    first_pairs = ids[pairs[0]]
    return PackedNames(ids=ids, pairs=pairs, first_pairs=first_pairs,
                       reads_root=reads_root, inner_rows=inner_rows, inner_older=inner_older,
                       targets=flat, weight=weight,
                       odd_rows=odd_rows, odd_extra=weight[odd_rows] - 1, n_names=B, n_targets=len(flat))


def pack_padded(X: torch.Tensor, Y: torch.Tensor, block_size: int, vocab_size: int,
                dilations: Sequence[int] | None = None) -> PackedNames:
    """`pack` from `pad_names` rows: X (B, block_size + L), Y (B, L + 1). A row keeps its
    characters up to its last real target (the rest is padding)."""
    real = Y != -1
    rows = real.any(1)  # a row without a real target contributes nothing
    X, Y, real = X[rows], Y[rows], real[rows]
    idx = X[:, block_size:]
    reach = real.flip(1).cumsum(1).flip(1) > 0  # (B, L + 1): outputs up to the last real one
    keep = reach[:, 1:]  # characters that feed a kept output
    return pack(idx[keep], keep.sum(1), block_size, vocab_size, targets=Y[reach], dilations=dilations)


def packed_rows(words: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoded names -> (chars (M,), lengths (B,)) for `pack`."""
    lengths = torch.tensor([len(w) for w in words], dtype=torch.long)
    return torch.tensor([i for w in words for i in w], dtype=torch.long), lengths


# --------------------------------------------------------------------------- evaluation batches

EVAL_POSITIONS = 32_768      # target positions per evaluation batch, at most
EVAL_LOGITS = 32_768 * 32    # and logits (positions x vocabulary): 4 MiB of float32 per batch


def eval_positions(vocab_size: int, max_positions: int = EVAL_POSITIONS) -> int:
    """Target positions per evaluation batch: `max_positions`, fewer for a big vocabulary, so
    a batch's logits stay within EVAL_LOGITS whatever the vocabulary (3,001 ids: 349)."""
    if max_positions < 1:
        raise WavenetError(f"max_positions must be at least 1, got {max_positions}", param="max_positions")
    return max(1, min(max_positions, EVAL_LOGITS // vocab_size))


def eval_batches(model, words: Sequence[str], vocab, max_positions: int = EVAL_POSITIONS
                 ) -> Iterator[tuple]:
    """Batches covering every target of `words` once, in the layout the model takes, in the
    words' order, each at most `eval_positions(len(vocab), max_positions)` target positions:
    the MLP's windows (X, Y) in chunks; whole names packed, (PackedNames, None), for the
    convolutional models (no prefix, no padding computed); `pad_names` rows (X, Y) for the
    peers (lstm, gru, transformer), names of one length together (the padding is then
    none; the batches follow the words' order within each length). A name longer than the
    budget on its own gets a batch of its own."""
    for X, Y, _ in indexed_eval_batches(model, words, vocab, max_positions):
        yield X, Y


def indexed_eval_batches(model, words: Sequence[str], vocab, max_positions: int = EVAL_POSITIONS
                         ) -> Iterator[tuple]:
    """`eval_batches` as (X, Y, word): `word` (n,) is the index into `words` of each of the
    batch's n targets, in the order `evaluate.batch_nll` returns their losses (per-word
    scores add them up, scoring.py)."""
    budget = eval_positions(len(vocab), max_positions)
    if model.kind == "mlp":
        X, Y = build_windows(words, vocab, model.block_size)
        word = torch.repeat_interleave(torch.arange(len(words)), vocab.encode_all(words)[1] + 1)
        for i in range(0, len(X), budget):
            yield X[i:i + budget], Y[i:i + budget], word[i:i + budget]
        return
    if model.kind in PEERS:  # padded rows, by length
        order = sorted(range(len(words)), key=lambda i: len(words[i]))
        first = 0
        while first < len(order):
            width = len(words[order[first]]) + 1  # targets of each name of this batch
            last = first + max(1, budget // width)
            chosen = [i for i in order[first:last] if len(words[i]) + 1 == width]
            X, Y = pad_names([words[i] for i in chosen], vocab, model.block_size)
            yield X, Y, torch.tensor(chosen, dtype=torch.long).repeat_interleave(width)
            first += len(chosen)
        return
    chars, lengths = vocab.encode_all(words)
    ends = torch.cumsum(lengths + 1, 0).tolist()  # targets up to and including each name
    starts = (torch.cumsum(lengths, 0) - lengths).tolist()
    first, done = 0, 0
    while first < len(words):
        last = first + 1  # at least one name; then as many as fit
        while last < len(words) and ends[last] - done <= budget:
            last += 1
        a, b = starts[first], starts[last - 1] + int(lengths[last - 1])
        word = torch.arange(first, last).repeat_interleave(lengths[first:last] + 1)  # pad_names order
        yield pack(chars[a:b], lengths[first:last], model.block_size, len(vocab),
                   dilations=model.dilations), None, word
        first, done = last, ends[last - 1]


# --------------------------------------------------------------------------- training batch sources


class WindowBatches:
    """The lecture's batches: `batch_size` windows drawn uniformly, with replacement, from
    one torch.Generator (the same stream that initialised the model, as in the lecture).

    With a process `group` (torchrun), every rank draws the same batch and keeps its share
    (distributed.share). `counts`: (targets in this rank's share, in the whole batch) of the
    last batch; every window is one target."""

    def __init__(self, X: torch.Tensor, Y: torch.Tensor, batch_size: int, generator: torch.Generator,
                 device="cpu", group: Group | None = None, rows: torch.Tensor | None = None):
        self.X, self.Y = X.to(device), Y.to(device)
        self.rows = None if rows is None else rows.to(device)
        self.batch_size, self.generator, self.device, self.group = batch_size, generator, device, group
        self.counts = (batch_size, batch_size)

    @classmethod
    def from_words(cls, words, vocab, block_size: int, batch_size: int, generator: torch.Generator,
                   device="cpu", group: Group | None = None) -> WindowBatches:
        """The windows of `build_windows(words, ...)`, drawn alike, but kept as one id per
        position (`window_starts`) and cut out per batch: a big corpus costs ~2 ids per
        target instead of block_size + 1."""
        seq, first = window_starts(words, vocab, block_size)
        seq = seq.to(device)  # then the unfolded view stays a view on the device too
        return cls(seq.unfold(0, block_size, 1), seq[first.to(device) + block_size], batch_size, generator,
                   device, group, rows=first)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(0, len(self.Y), (self.batch_size,), generator=self.generator)
        ix = ix[share(self.batch_size, self.group)].to(self.device)  # this rank's windows of the batch
        self.counts = (len(ix), self.batch_size)
        return self.X[ix if self.rows is None else self.rows[ix]], self.Y[ix]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class NameBatches:
    """Whole names for the convolutional models, `batch_size` names per step.

    Each epoch shuffles the names and cuts them into batches, so a batch is a random sample
    of names, as the MLP's batch is a random sample of windows. `group_by_length` = K > 0
    sorts names by length within chunks of K batches before cutting, which cuts padding but
    makes each batch's BatchNorm statistics specific to one length, and the model learns to
    read them (docs/whole-name-training.md); 0, the default, keeps batches random.
    The batch of step s depends only on (seed, s), so resuming needs nothing but the step.
    With a process `group` (torchrun), every rank plans the same batches and takes its
    contiguous share of each; `counts`: (targets in this rank's share, in the whole batch).

    `packed` (the default): `next()` returns (`PackedNames`, None), the fast path's layout,
    built from names encoded once per run; False: `pad_names` rows (X, Y), for the reference
    forward. Both hold the same names in the same order. `dilations`: the model's layers'
    dilations, for the packing (default: the tree's).
    """

    def __init__(self, words, vocab, block_size: int, batch_size: int, seed: int, device="cpu",
                 group_by_length: int = 0, packed: bool = True, dilations=None, group: Group | None = None):
        self.words, self.vocab, self.block_size = list(words), vocab, block_size
        self.batch_size, self.seed, self.device, self.group = batch_size, seed, device, group
        self.counts = (0, 0)
        self.group_by_length, self.packed, self.dilations = group_by_length, packed, dilations
        self.per_epoch = -(-len(self.words) // batch_size)
        self.step, self._epoch, self._plan = 0, None, None
        if packed:  # every name's ids, once: (all characters, lengths, where each begins)
            self._chars, self._lengths = vocab.encode_all(self.words)
            self._starts = torch.cumsum(self._lengths, 0) - self._lengths

    def _make_plan(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.words), generator=g).tolist()
        if self.group_by_length > 0:
            chunk = self.group_by_length * self.batch_size
            order = [j for i in range(0, len(order), chunk)
                     for j in sorted(order[i:i + chunk], key=lambda j: len(self.words[j]))]
        batches = [order[k:k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        if self.group_by_length > 0:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def next_names(self) -> list[int]:
        """The indices into `words` of the next batch's names (advances the step)."""
        epoch, k = divmod(self.step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._plan = epoch, self._make_plan(epoch)
        self.step += 1
        return self._plan[k]

    def next(self):
        chosen = self.next_names()
        targets = [len(self.words[j]) + 1 for j in chosen]
        part = share(len(chosen), self.group)  # this rank's names of the batch
        chosen = chosen[part]
        self.counts = (sum(targets[part]), sum(targets))
        if not self.packed:
            X, Y = pad_names([self.words[j] for j in chosen], self.vocab, self.block_size)
            return X.to(self.device), Y.to(self.device)
        chosen = torch.tensor(chosen, dtype=torch.long)
        lengths, starts = self._lengths[chosen], self._starts[chosen]
        shift = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths)
        chars = self._chars[torch.arange(len(shift)) + shift]
        batch = pack(chars, lengths, self.block_size, len(self.vocab), dilations=self.dilations)
        if self.group is not None:
            batch.n_group_targets = self.counts[1]
        return batch.to(self.device), None

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]


def make_batches(model, words, vocab, cfg, generator: torch.Generator, device="cpu",
                 group: Group | None = None):
    """The batch source a model trains on (cfg: a `TrainConfig`): whole names for the
    convolutional models (packed) and the peers (`pad_names` rows), the lecture's random
    windows (drawn from `generator`, the stream that initialised the model) for the MLP;
    this rank's share of each batch under torchrun."""
    if group is not None and cfg.batch_size < group.world_size:
        raise WavenetError(f"batch_size {cfg.batch_size} is smaller than the {group.world_size} processes: "
                           "each needs a share of every batch", param="batch_size")
    if model.kind == "mlp":
        return WindowBatches.from_words(words, vocab, model.block_size, cfg.batch_size, generator, device,
                                        group)
    packed = model.kind not in PEERS  # the peers train on padded rows
    return NameBatches(words, vocab, model.block_size, cfg.batch_size, cfg.seed, device,
                       group_by_length=cfg.group_by_length, packed=packed,
                       dilations=model.dilations if packed else None, group=group)
