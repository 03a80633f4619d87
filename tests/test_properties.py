"""Property-based tests (hypothesis): vocabulary, both dataset layouts, conv == MLP."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wavenet.batches import build_windows, pad_names
from wavenet.data import Vocab
from wavenet.models import ConvWaveNet, HierarchicalMLP

# Words as load_words produces them: non-empty, no surrounding whitespace, no line breaks.
word = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"), min_size=1,
               max_size=12).map(str.strip).filter(bool)
words = st.lists(word, min_size=1, max_size=8)


@given(words)
def test_vocabulary_round_trips_any_unicode(ws):
    vocab = Vocab.from_words(ws)
    assert Vocab.from_dict(vocab.to_dict()) == vocab
    for w in ws:
        ids = vocab.encode(w)
        assert all(1 <= i < len(vocab) for i in ids)
        assert vocab.decode(ids) == w


@given(words, st.sampled_from([2, 4, 8, 16]))
def test_both_layouts_hold_the_same_targets(ws, block_size):
    vocab = Vocab.from_words(ws)
    X, Y = build_windows(ws, vocab, block_size)
    Xn, Yn = pad_names(ws, vocab, block_size)
    assert len(Y) == int((Yn != -1).sum()) == sum(len(w) + 1 for w in ws)
    assert torch.equal(Yn[Yn != -1], Y)
    assert torch.equal(Xn[:, :block_size], torch.zeros_like(Xn[:, :block_size]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 5), st.integers(2, 30), st.integers(1, 6), st.integers(1, 9), st.integers(0, 2**31 - 1),
       st.integers(1, 6), st.integers(0, 12))
def test_conv_equals_mlp_on_random_configs(randomize_batchnorm, log_block, vocab_size, n_embd, n_hidden, seed,
                                           batch, extra):
    block_size = 2 ** log_block
    g = torch.Generator().manual_seed(seed)
    mlp = HierarchicalMLP(vocab_size, block_size, n_embd, n_hidden, generator=g).double()
    mlp = randomize_batchnorm(mlp, g)
    mlp.eval()
    conv = ConvWaveNet.from_mlp(mlp)
    idx = torch.randint(0, vocab_size, (batch, block_size + extra), generator=g)
    if seed % 2:
        idx[:, :block_size] = 0  # an all-boundary prefix: the skip-prefix path
    with torch.no_grad():
        out = conv(idx)[0]
        windows = idx.unfold(1, block_size, 1)  # (B, extra + 1, block)
        expected = mlp(windows.reshape(-1, block_size))[0].view(batch, extra + 1, vocab_size)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
