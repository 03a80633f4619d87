"""Every batch holds at most about its budget of padded positions, whatever the mix of
lengths: one long line must not pad thousands of short ones to its length."""

import random

import pytest
import torch

from wavenet import bench
from wavenet.data import Vocab, length_batches, pad_names
from wavenet.errors import WavenetError
from wavenet.evaluate import eval_batches, split_loss
from wavenet.models import ConvWaveNet, HierarchicalMLP


@pytest.fixture(scope="module")
def mixed(names):
    """3,000 short names and one line near the default max_length (1000), shuffled."""
    words = names[:3000] + ["".join(random.Random(0).choices("abcdefghij", k=990))]
    random.Random(1).shuffle(words)
    return words


@pytest.mark.parametrize("budget", [32_768, 4_096, 500])
def test_conv_eval_batches_stay_within_the_budget(mixed, budget):
    vocab = Vocab.from_words(mixed)
    model = ConvWaveNet(len(vocab), n_embd=4, n_hidden=8)
    seen, targets = [], 0
    for X, Y in eval_batches(model, mixed, vocab, max_positions=budget):
        padded = Y.numel()  # (names in the batch) x (longest + 1)
        alone = Y.shape[0] == 1 and Y.shape[1] > budget  # an item longer than the budget
        assert padded <= budget or alone, f"{Y.shape[0]} names x {Y.shape[1]} positions > {budget}"
        assert X.shape == (Y.shape[0], model.block_size + Y.shape[1] - 1)
        targets += int((Y != -1).sum())
        seen += [vocab.decode(x[8:][y[:-1] > 0].tolist()) for x, y in zip(X, Y)]
    assert sorted(seen) == sorted(mixed), "every item exactly once"
    assert targets == sum(len(w) + 1 for w in mixed)


def test_mlp_eval_batches_stay_within_the_budget(mixed):
    vocab = Vocab.from_words(mixed)
    model = HierarchicalMLP(len(vocab), n_embd=4, n_hidden=8)
    sizes = [len(Y) for _, Y in eval_batches(model, mixed, vocab, max_positions=4_096)]
    assert max(sizes) <= 4_096 and sum(sizes) == sum(len(w) + 1 for w in mixed)


def test_the_batching_does_not_change_the_loss(mixed):
    vocab = Vocab.from_words(mixed)
    model = ConvWaveNet(len(vocab), n_embd=4, n_hidden=8, generator=torch.Generator().manual_seed(0)).double()
    model.eval()
    X, Y = pad_names(mixed, vocab, 8)  # one batch of everything, padded to the long line
    with torch.no_grad():
        whole = model(X, Y)[1].item()
    for budget in (32_768, 1_000):
        batches = list(eval_batches(model, mixed, vocab, max_positions=budget))
        assert abs(split_loss(model, mixed, vocab, batches=batches) - whole) < 1e-12


def test_length_batches_edge_cases():
    assert length_batches(["a" * 50, "b", "cc"], 10) == [["b", "cc"], ["a" * 50]]
    assert length_batches(["abc"] * 10, 8) == [["abc"] * 2] * 5  # 2 x 4 positions each
    with pytest.raises(WavenetError, match="max_positions must be at least 1"):
        length_batches(["a"], 0)


def test_the_benchmark_evaluates_through_the_same_batches(mixed, monkeypatch):
    """bench_eval takes its batches from eval_batches: the same bound holds there."""
    vocab = Vocab.from_words(mixed)
    mlp = HierarchicalMLP(len(vocab), n_embd=4, n_hidden=8)
    conv = ConvWaveNet.from_mlp(mlp)
    shapes = []
    real = eval_batches

    def spy(model, words, vocab, max_positions=32_768):
        for X, Y in real(model, words, vocab, max_positions):
            shapes.append((model.kind, Y.numel()))
            yield X, Y

    monkeypatch.setattr(bench, "eval_batches", spy)
    bench.bench_eval(mlp, conv, mixed, vocab, bench.BenchConfig(repeats=1))
    assert {kind for kind, _ in shapes} == {"mlp", "conv"}
    assert max(n for _, n in shapes) <= 32_768


def test_a_conv_training_step_keeps_almost_nothing_per_padded_position():
    """A training batch is `batch_size` names padded to its longest, so one long name pads
    the others. The conv's training forward computes no padded position, and its loss is
    taken over real targets only: what a step keeps for the backward pass grows by about a
    mask byte per padded position, not by logits (4 x vocabulary bytes each) or activations."""
    words = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "charlotte", "amelia", "jo", "x"]
    vocab = Vocab.from_words(words)
    model = ConvWaveNet(len(vocab), n_embd=6, n_hidden=10).train()
    X, Y = pad_names(words, vocab, 8)
    saved = {}
    for extra in (0, 1_000):
        Xp = torch.cat([X, torch.zeros(len(X), extra, dtype=torch.long)], 1)
        Yp = torch.cat([Y, torch.full((len(Y), extra), -1)], 1)
        saved[extra] = bench.saved_bytes(lambda Xp=Xp, Yp=Yp: model(Xp, Yp)[1].backward())
    per_position = (saved[1_000] - saved[0]) / (len(words) * 1_000)
    assert per_position <= 2, f"{per_position:.1f} bytes kept per padded position"
