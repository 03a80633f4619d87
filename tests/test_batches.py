"""Evaluation batches: every target once, each batch bounded in positions and in logits
(positions x vocabulary) whatever the mix of lengths or the size of the vocabulary, and the
loss unchanged by the batching."""

import random

import pytest
import torch
import torch.nn.functional as F

from wavenet import bench
from wavenet.batches import EVAL_LOGITS, PackedNames, eval_batches, eval_positions, pad_names
from wavenet.data import Vocab
from wavenet.errors import WavenetError
from wavenet.evaluate import nll_sum, split_loss
from wavenet.models import ConvWaveNet, HierarchicalMLP, WaveNet


@pytest.fixture(scope="module")
def mixed(names):
    """3,000 short names and one line near the default max_length (1000), shuffled."""
    words = names[:3000] + ["".join(random.Random(0).choices("abcdefghij", k=990))]
    random.Random(1).shuffle(words)
    return words


def unpack(batch: PackedNames, vocab) -> list[str]:
    """The names a packed batch holds, read from its targets (each name's ids, then 0), after
    checking that each character's row holds that character."""
    V = len(vocab)
    rows, ids = (batch.targets // V).tolist(), (batch.targets % V).tolist()
    names, name = [], []
    for k, (row, i) in enumerate(zip(rows, ids)):
        if name or k == 0 or ids[k - 1] == 0:  # not output 0: read from the previous character's row
            assert (row == 0) == (not name) and (not name or batch.ids[row] == name[-1])
        if i == 0:
            names.append(vocab.decode(name))
            name = []
        else:
            name.append(i)
    return names


@pytest.mark.parametrize("budget", [32_768, 4_096, 500])
@pytest.mark.parametrize("kind", ["conv", "wavenet"])
def test_packed_eval_batches_stay_within_the_budget(mixed, budget, kind):
    vocab = Vocab.from_words(mixed)
    model = ConvWaveNet(len(vocab), n_embd=4, n_hidden=8) if kind == "conv" else \
        WaveNet(len(vocab), n_layers=2, n_cycles=2, n_residual=4, n_skip=4)
    targets, seen = 0, []
    for batch, none in eval_batches(model, mixed, vocab, max_positions=budget):
        assert none is None and len(batch.pairs) == len(model.dilations)
        alone = batch.n_names == 1  # an item longer than the budget
        assert batch.n_targets <= budget or alone, f"{batch.n_targets} targets > {budget}"
        assert len(batch.ids) <= batch.n_targets  # rows: the characters and row 0, no padding
        targets += batch.n_targets
        seen += unpack(batch, vocab)
    assert seen == mixed, "every item exactly once, in order"
    assert targets == sum(len(w) + 1 for w in mixed)


def test_a_big_vocabulary_shrinks_the_batches_to_the_logits_budget():
    """3,001 ids (a CJK file): a batch holds at most EVAL_LOGITS logits, positions x vocabulary,
    where a budget of positions alone held 32,768 x 3,001 (393 MB of float32)."""
    rng = random.Random(0)
    chars = [chr(0x4E00 + i) for i in range(3000)]
    words = chars + ["".join(rng.choices(chars, k=rng.randint(2, 4))) for _ in range(5000)]
    vocab = Vocab.from_words(words)
    assert len(vocab) == 3001 and eval_positions(len(vocab)) == EVAL_LOGITS // 3001
    for kind, model in (("conv", ConvWaveNet(len(vocab), n_embd=4, n_hidden=8)),
                        ("mlp", HierarchicalMLP(len(vocab), n_embd=4, n_hidden=8))):
        sizes = [len(Y) if Y is not None else X.n_targets for X, Y in eval_batches(model, words, vocab)]
        assert max(sizes) * len(vocab) <= EVAL_LOGITS, kind
        assert sum(sizes) == sum(len(w) + 1 for w in words), kind
    assert eval_positions(27) == 32_768  # names: the positions bound, as before
    with pytest.raises(WavenetError, match="max_positions must be at least 1"):
        eval_positions(27, 0)


def test_mlp_eval_batches_stay_within_the_budget(mixed):
    vocab = Vocab.from_words(mixed)
    model = HierarchicalMLP(len(vocab), n_embd=4, n_hidden=8)
    sizes = [len(Y) for _, Y in eval_batches(model, mixed, vocab, max_positions=4_096)]
    assert max(sizes) <= 4_096 and sum(sizes) == sum(len(w) + 1 for w in mixed)


@pytest.mark.parametrize("kind", ["conv", "wavenet"])
def test_the_batching_does_not_change_the_loss(mixed, kind):
    """split_loss over packed batches of any size == the reference forward over one padded
    batch of everything (padded to the long line), float64."""
    long = max(mixed, key=len)
    mixed = [w for w in mixed[:500] if w != long] + [long] + mixed[500:900]
    vocab = Vocab.from_words(mixed)
    g = torch.Generator().manual_seed(0)
    model = ConvWaveNet(len(vocab), n_embd=4, n_hidden=8, generator=g) if kind == "conv" else \
        WaveNet(len(vocab), n_layers=2, n_cycles=2, n_residual=4, n_skip=4, generator=g)
    model = model.double().eval()
    X, Y = pad_names(mixed, vocab, model.block_size)
    with torch.no_grad():
        whole = model(X, Y)[1].item()
    for budget in (32_768, 500):
        batches = list(eval_batches(model, mixed, vocab, max_positions=budget))
        assert abs(split_loss(model, mixed, vocab, batches=batches) - whole) < 1e-12


def test_the_float64_loss_needs_no_float64_copy_of_the_logits(monkeypatch):
    """nll_sum over float32 logits equals float64 cross-entropy of the whole tensor (1e-9 per
    target), while converting at most its chunk of rows at a time."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2_000, 3_001, generator=g) * 4
    targets = torch.randint(0, 3_001, (2_000,), generator=g)
    expected = F.cross_entropy(logits.double(), targets, reduction="sum")
    real_double, largest = torch.Tensor.double, []

    def spy(t):
        largest.append(t.numel())
        return real_double(t)

    monkeypatch.setattr(torch.Tensor, "double", spy)
    got = nll_sum(logits, torch.arange(2_000), targets)
    monkeypatch.undo()
    assert abs(got.item() - expected.item()) < 1e-9 * 2_000
    assert max(largest) <= 1 << 16 and sum(largest) > logits.numel()  # chunked, every row covered


def test_the_benchmark_evaluates_through_the_same_batches(mixed, monkeypatch):
    """bench_eval takes its batches from eval_batches: the same bound holds there."""
    vocab = Vocab.from_words(mixed)
    mlp = HierarchicalMLP(len(vocab), n_embd=4, n_hidden=8)
    conv = ConvWaveNet.from_mlp(mlp)
    sizes = []
    real = eval_batches

    def spy(model, words, vocab, max_positions=32_768):
        for X, Y in real(model, words, vocab, max_positions):
            sizes.append((model.kind, len(Y) if Y is not None else X.n_targets))
            yield X, Y

    monkeypatch.setattr(bench, "eval_batches", spy)
    bench.bench_eval(mlp, conv, mixed, vocab, bench.BenchConfig(repeats=1))
    assert {kind for kind, _ in sizes} == {"mlp", "conv"}
    assert max(n for kind, n in sizes if kind == "mlp") <= 32_768
    assert max(n for kind, n in sizes if kind == "conv") <= 32_768 or len(mixed[0]) > 32_768
