"""The convolution is the lecture's tree: same function, same loss, same gradients.

BatchNorm running statistics and affine parameters are randomised, so a dropped, misplaced
or mis-transferred BatchNorm cannot pass. Tolerances: float32 1e-5, float64 1e-10.
"""

import pytest
import torch

from wavenet.batches import build_windows, pack_padded, pad_names
from wavenet.data import split_words
from wavenet.evaluate import split_loss
from wavenet.models import ConvWaveNet, HierarchicalMLP, kernel_to_linear

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
CASES = [(b, d) for b in (8, 16, 32) for d in (torch.float32, torch.float64)]


@pytest.fixture(scope="module")
def val_words(names):
    return split_words(names)[1]


@pytest.fixture(scope="module")
def randomised_pair(randomize_batchnorm):
    """randomised_pair(vocab_size, block_size, dtype, seed): an MLP with random BatchNorm and
    output bias, in eval mode, and its conv transfer."""
    def make(vocab_size, block_size, dtype, seed=0):
        g = torch.Generator().manual_seed(seed)
        mlp = HierarchicalMLP(vocab_size, block_size, n_embd=12, n_hidden=32, generator=g).to(dtype)
        randomize_batchnorm(mlp, g)
        with torch.no_grad():
            mlp.head.bias.normal_(generator=g)
        mlp.eval()
        return mlp, ConvWaveNet.from_mlp(mlp)
    return make


def close(a, b, dtype):
    torch.testing.assert_close(a, b, rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("block_size, dtype", CASES)
def test_last_position_every_val_window(val_words, vocab, block_size, dtype, randomised_pair):
    mlp, conv = randomised_pair(len(vocab), block_size, dtype)
    X, _ = build_windows(val_words, vocab, block_size)
    with torch.no_grad():
        out = conv(X)[0]
        assert out.shape == (len(X), 1, len(vocab))
        close(out[:, 0], mlp(X)[0], dtype)


@pytest.mark.parametrize("block_size, dtype", CASES)
def test_every_position_of_whole_val_names(val_words, vocab, block_size, dtype, randomised_pair):
    """Both of the conv's eval paths, the reference on padded names and the packed one."""
    mlp, conv = randomised_pair(len(vocab), block_size, dtype)
    Xw, Yw = build_windows(val_words, vocab, block_size)
    Xn, Yn = pad_names(val_words, vocab, block_size)
    batch = pack_padded(Xn, Yn, block_size, len(vocab))
    with torch.no_grad():
        expected = mlp(Xw)[0]  # (N, V) in the windows' order
        logits = conv(Xn)[0]  # (B, L + 1, V)
        assert logits.shape[:2] == Yn.shape
        close(logits[Yn != -1], expected, dtype)  # row-major order == the windows' order
        packed = conv(batch)[0]  # (R, V) per packed row
        close(packed[batch.targets // len(vocab)], expected, dtype)
    assert torch.equal(Yn[Yn != -1], Yw) and torch.equal(batch.targets % len(vocab), Yw)


@pytest.mark.parametrize("block_size, dtype", CASES)
def test_split_loss_and_gradients(val_words, vocab, block_size, dtype, randomised_pair):
    mlp, conv = randomised_pair(len(vocab), block_size, dtype)
    Xw, Yw = build_windows(val_words, vocab, block_size)
    Xn, Yn = pad_names(val_words, vocab, block_size)
    _, loss_mlp = mlp(Xw, Yw)
    _, loss_conv = conv(Xn, Yn)
    close(loss_conv, loss_mlp, dtype)
    assert abs(split_loss(conv, val_words, vocab) - split_loss(mlp, val_words, vocab)) < TOL[dtype]
    loss_mlp.backward()
    loss_conv.backward()
    grads = {name: p.grad for name, p in conv.named_parameters()}
    for name, p in mlp.named_parameters():
        g = kernel_to_linear(grads[name]) if name.startswith("fuse.") else grads[name]
        assert p.grad.abs().max() > 0, name
        close(g, p.grad, dtype)


@pytest.mark.parametrize("block_size", [8, 16, 32])
def test_causality(vocab, block_size, randomised_pair):
    _, conv = randomised_pair(len(vocab), block_size, torch.float64)
    g = torch.Generator().manual_seed(1)
    prefix = torch.zeros(4, block_size, dtype=torch.long)
    X = torch.cat([prefix, torch.randint(1, 27, (4, 20), generator=g)], 1)
    base = conv(X)[0]
    for t in (block_size, block_size + 7, X.shape[1] - 1):  # change every input from t on
        Z = X.clone()
        Z[:, t:] = torch.randint(1, 27, Z[:, t:].shape, generator=g)
        out = conv(Z)[0]
        j = t - block_size + 1  # first output that sees position t
        torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=0)
        assert not torch.allclose(out[:, j:], base[:, j:]), "the future must matter somewhere"


def test_transfer_round_trip_and_shared_init(vocab, randomised_pair):
    mlp, conv = randomised_pair(len(vocab), 16, torch.float32)
    back = conv.to_mlp()
    for (n1, a), (n2, b) in zip(mlp.state_dict().items(), back.state_dict().items()):
        assert n1 == n2 and torch.equal(a, b)
    a = ConvWaveNet(27, generator=torch.Generator().manual_seed(42))
    b = ConvWaveNet.from_mlp(HierarchicalMLP(27, generator=torch.Generator().manual_seed(42)))
    for (n1, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n1
    assert [c.dilation[0] for c in a.fuse] == [1, 2, 4] and a.receptive_field == 8
    assert sum(p.numel() for p in a.parameters()) == 76_579
    for block_size in (2, 4, 16, 32, 64):
        assert ConvWaveNet(27, block_size=block_size, n_embd=4, n_hidden=4).receptive_field == block_size
