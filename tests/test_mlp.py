import math

import pytest
import torch

from wavenet.batches import build_windows
from wavenet.data import split_words
from wavenet.errors import WavenetError
from wavenet.models import HierarchicalMLP, build_model


def test_parameter_count_is_the_lectures():
    model = HierarchicalMLP(27)
    assert sum(p.numel() for p in model.parameters()) == 76_579


def test_init_draws_match_the_lecture_order():
    """The lecture seeds once and draws C, then each Linear as randn(fan_in, fan_out)."""
    model = HierarchicalMLP(27, generator=torch.Generator().manual_seed(42))
    g = torch.Generator().manual_seed(42)
    C = torch.randn((27, 24), generator=g)
    W = [torch.randn((fi, 128), generator=g) / fi**0.5 for fi in (48, 256, 256)]
    Wout = torch.randn((128, 27), generator=g) / 128**0.5 * 0.1
    torch.testing.assert_close(model.wte.weight, C, rtol=0, atol=0)
    for layer, w in zip(model.fuse, W):
        torch.testing.assert_close(layer.weight, w.T, rtol=0, atol=0)
    torch.testing.assert_close(model.head.weight, Wout.T, rtol=0, atol=0)
    assert not model.head.bias.any()


def test_initial_loss_is_near_uniform(names, vocab):
    train, _, _ = split_words(names)
    X, Y = build_windows(train[:2000], vocab, 8)
    model = HierarchicalMLP(len(vocab), generator=torch.Generator().manual_seed(42))
    _, loss = model(X, Y)
    # last layer x0.1 makes the first predictions nearly uniform: ln(27) = 3.296
    assert abs(loss.item() - math.log(27)) < 0.05
    assert abs(loss.item() - 3.30) < 0.03


def test_matches_a_plain_reimplementation_of_the_lecture_forward():
    """An independent transcription of the lecture's layers (FlattenConsecutive, Linear,
    BatchNorm1d with unbiased var, Tanh) on the same weights, in training mode."""
    torch.manual_seed(0)
    model = HierarchicalMLP(27, block_size=8, n_embd=6, n_hidden=10)
    for bn in model.norm:
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_()
    idx = torch.randint(0, 27, (32, 8))
    logits, _ = model(idx)
    x = model.wte.weight[idx]
    for lin, bn in zip(model.fuse, model.norm):
        B, T, C = x.shape
        x = x.view(B, T // 2, C * 2)
        if x.shape[1] == 1:
            x = x.squeeze(1)
        x = x @ lin.weight.T
        dim = (0, 1) if x.ndim == 3 else 0
        mean, var = x.mean(dim, keepdim=True), x.var(dim, keepdim=True)
        x = torch.tanh(bn.weight * (x - mean) / torch.sqrt(var + 1e-5) + bn.bias)
    expected = x @ model.head.weight.T + model.head.bias
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_running_stats_follow_the_lecture_momentum():
    model = HierarchicalMLP(27, block_size=2, n_embd=4, n_hidden=5)
    idx = torch.randint(0, 27, (16, 2))
    h = model.fuse[0](model.wte(idx).view(16, 1, 8)).view(16, 5)
    model(idx)
    torch.testing.assert_close(model.norm[0].running_mean, 0.1 * h.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.norm[0].running_var, 0.9 + 0.1 * h.var(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block_size", [2, 4, 8, 16, 32, 64])
def test_block_sizes_build_and_run(block_size):
    model = HierarchicalMLP(27, block_size=block_size, n_embd=4, n_hidden=8)
    idx = torch.randint(0, 27, (5, block_size))
    logits, loss = model(idx, torch.randint(0, 27, (5,)))
    assert logits.shape == (5, 27)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert model(idx[:1])[0].shape == (1, 27), "a batch of one must keep its rank in eval mode"


@pytest.mark.parametrize("block_size", [0, 1, 3, 6, 12, 100])
def test_bad_block_size(block_size):
    with pytest.raises(WavenetError, match="power of two"):
        HierarchicalMLP(27, block_size=block_size)


def test_unknown_model_kind():
    with pytest.raises(WavenetError, match="unknown model kind 'rnn'"):
        build_model(dict(kind="rnn", vocab_size=27))


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = HierarchicalMLP(27, block_size=8, n_embd=8, n_hidden=32)
    X, Y = torch.randint(0, 27, (16, 8)), torch.randint(0, 27, (16,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        _, loss = model(X, Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
