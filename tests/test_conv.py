"""Whole-name training and cached generation for ConvWaveNet."""

import pytest
import torch

from wavenet.batches import build_windows, pad_names
from wavenet.data import Vocab
from wavenet.models import ConvCache, ConvWaveNet
from wavenet.sample import generate

WORDS = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "charlotte", "amelia", "jo", "x"]
VOCAB = Vocab.from_words(WORDS)


@pytest.fixture(scope="module")
def model(randomize_batchnorm):
    """model(block_size, dtype, seed): a small ConvWaveNet with random BatchNorm."""
    def make(block_size=8, dtype=torch.float64, seed=0):
        g = torch.Generator().manual_seed(seed)
        m = ConvWaveNet(len(VOCAB), block_size=block_size, n_embd=6, n_hidden=10, generator=g).to(dtype)
        return randomize_batchnorm(m, g)
    return make


def train_step(m, X, Y):
    m.train()
    m.zero_grad()
    logits, loss = m(X, Y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    stats = {n: b.clone() for n, b in m.named_buffers()}
    return logits, loss, grads, stats


@pytest.mark.parametrize("block_size", [2, 8, 16])
def test_extra_padding_changes_nothing_in_training(block_size, model):
    X, Y = pad_names(WORDS, VOCAB, block_size)
    Xp = torch.cat([X, torch.zeros(len(X), 5, dtype=torch.long)], 1)
    Yp = torch.cat([Y, torch.full((len(Y), 5), -1)], 1)
    a = train_step(model(block_size), X, Y)
    b = train_step(model(block_size), Xp, Yp)
    real = Y != -1
    torch.testing.assert_close(b[0][:, :Y.shape[1]][real], a[0][real], rtol=0, atol=1e-12)
    torch.testing.assert_close(b[1], a[1], rtol=0, atol=1e-12)
    for name in a[2]:
        torch.testing.assert_close(b[2][name], a[2][name], rtol=0, atol=1e-12, msg=name)
    for name in a[3]:
        torch.testing.assert_close(b[3][name], a[3][name], rtol=0, atol=1e-12, msg=name)


def test_training_statistics_count_positions_aligned_with_real_targets(model):
    """Layer-0 BatchNorm in training: mean and unbiased variance over exactly the rows at
    positions aligned with real targets (one row per target), computed by hand."""
    m = model(8)
    X, Y = pad_names(WORDS, VOCAB, 8)
    m.train()
    before = m.norm[0].running_mean.clone()
    m(X, Y)
    h = m.fuse[0](m.wte(X).transpose(1, 2))  # (B, H, T - 1); index i is position i + 1
    rows = h[:, :, 8 - 2:].transpose(1, 2)[Y != -1]  # positions 7.. aligned with outputs 0..
    assert rows.shape[0] == sum(len(w) + 1 for w in WORDS)
    expected = 0.9 * before + 0.1 * rows.mean(0)
    torch.testing.assert_close(m.norm[0].running_mean, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("block_size, dtype, tol", [(8, torch.float32, 1e-5), (16, torch.float64, 1e-10),
                                                    (2, torch.float64, 1e-10)])
def test_cached_logits_equal_full_forward_at_every_step(block_size, dtype, tol, model):
    m = model(block_size, dtype).eval()
    X, Y = pad_names(WORDS, VOCAB, block_size)
    with torch.no_grad():
        full = m(X)[0]  # (B, L + 1, V)
        cache = ConvCache(m, len(WORDS))
        torch.testing.assert_close(cache.logits, full[:, 0], rtol=0, atol=tol)
        for t in range(X.shape[1] - block_size):
            logits = m.step(X[:, block_size + t], cache)
            torch.testing.assert_close(logits, full[:, t + 1], rtol=0, atol=tol)


def test_cached_and_full_sampling_draw_identical_names(model):
    m = model(8, torch.float32).eval()
    for seed in range(3):
        kwargs = dict(generator=torch.Generator().manual_seed(seed), max_new_tokens=30)
        cached = generate(m, 64, method="cached", **kwargs)
        kwargs["generator"] = torch.Generator().manual_seed(seed)
        full = generate(m, 64, method="full", **kwargs)
        kwargs["generator"] = torch.Generator().manual_seed(seed)
        window = generate(m, 64, method="window", **kwargs)
        assert cached == full == window
        assert len({tuple(n) for n in cached}) > 10


def test_whole_name_objective_is_the_per_position_objective(model):
    """Loss over padded names == mean loss over every window of those names (eval)."""
    m = model(8).eval()
    X, Y = pad_names(WORDS, VOCAB, 8)
    Xw, Yw = build_windows(WORDS, VOCAB, 8)
    torch.testing.assert_close(m(X, Y)[1], m.to_mlp().eval()(Xw, Yw)[1], rtol=0, atol=1e-12)


def test_each_layer_is_the_conv1d_it_holds(model):
    """The layer body applies each kernel as one matrix to the pair [x(t - d) | x(t)],
    channels last; that is exactly the module's own Conv1d over (B, C, T), dilation
    included, then BatchNorm and tanh."""
    m = model(16).eval()
    x = torch.randn(3, 30, 6, dtype=torch.float64)  # (B, T, C)
    for level, (conv, norm) in enumerate(zip(m.fuse, m.norm)):
        h = conv(x.transpose(1, 2)).transpose(1, 2)  # torch's Conv1d, (B, T - d, H)
        reference = torch.tanh((h - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
                               * norm.weight + norm.bias)
        d = conv.dilation[0]
        got = m.layer(level, torch.cat([x[:, :-d], x[:, d:]], -1))
        torch.testing.assert_close(got, reference, rtol=0, atol=1e-12)
        x = reference
