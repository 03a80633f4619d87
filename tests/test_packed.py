"""The packed path computes what the reference path computes.

`ConvWaveNet(X, Y)` on `pad_names` rows (autograd, tests/test_conv.py and
tests/test_equivalence.py tie it to the lecture's MLP) against `ConvWaveNet(PackedNames)`
(in training the fused step, forward and backward by hand, wavenet/models/tree_fused.py; in
eval the layer body on packed rows): loss, every gradient, BatchNorm's running statistics,
the log-probabilities of every target, in float64 and float32, in training and eval mode,
with ignored targets anywhere; and a short training run on each path. Every test runs twice:
the fused step's BatchNorm in C (models/bn_tanh.c, where a C compiler is found) and by torch
operators (the fallback).
"""

import copy
from dataclasses import fields

import pytest
import torch

from wavenet.batches import NameBatches, build_windows, pack, pack_padded, packed_rows, pad_names
from wavenet.data import Vocab
from wavenet.models import ConvWaveNet, HierarchicalMLP, native, tree_fused

WORDS = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "charlotte", "amelia", "jo", "x",
         "bartholomew", "zo"]
VOCAB = Vocab.from_words(WORDS)
TOL = {torch.float32: 2e-6, torch.float64: 1e-12}


@pytest.fixture(params=["C", "torch"], autouse=True)
def norm_path(request, monkeypatch):
    """Which way the fused step takes BatchNorm: "C" fails where a compiler exists and the
    kernels do not build (skips only where there is no compiler), "torch" turns them off."""
    if request.param == "torch":
        monkeypatch.setattr(native, "kernels", lambda like: None)
    elif native.library() is None:
        if "no C compiler" in native.status():
            pytest.skip(native.status())
        pytest.fail(native.status())
    return request.param


@pytest.fixture(scope="module")
def model(randomize_batchnorm):
    def make(block_size=8, dtype=torch.float64, seed=0):
        g = torch.Generator().manual_seed(seed)
        m = ConvWaveNet(len(VOCAB), block_size=block_size, n_embd=6, n_hidden=10, generator=g).to(dtype)
        randomize_batchnorm(m, g)
        with torch.no_grad():
            m.head.bias.normal_(generator=g)
        return m
    return make


def step(m, *batch):
    m.zero_grad(set_to_none=True)
    out, loss = m(*batch)
    loss.backward()
    return (out, loss, {n: p.grad.clone() for n, p in m.named_parameters()},
            {n: b.clone() for n, b in m.named_buffers()})


def assert_same_step(ref, fused, Y, dtype):
    tol = dict(rtol=0, atol=TOL[dtype])
    logits, loss, grads, stats = ref
    logp, loss_f, grads_f, stats_f = fused
    torch.testing.assert_close(loss_f, loss, **tol)
    for name in grads:
        assert grads[name].abs().max() > 0, name
        torch.testing.assert_close(grads_f[name], grads[name], **tol, msg=name)
    for name in stats:
        torch.testing.assert_close(stats_f[name], stats[name], **tol, msg=name)
    # the log-probability of every real target, in pad_names order
    expected = torch.log_softmax(logits, -1).gather(-1, Y.clamp(min=0)[..., None])[..., 0][Y != -1]
    return expected


@pytest.mark.parametrize("block_size", [2, 4, 8, 32])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("training", [True, False])
def test_fused_step_is_the_reference_step(block_size, dtype, training, model):
    X, Y = pad_names(WORDS, VOCAB, block_size)
    ref, fused = model(block_size, dtype), model(block_size, dtype)
    ref.train(training), fused.train(training)
    batch = pack_padded(X, Y, block_size, len(VOCAB))
    a, b = step(ref, X, Y), step(fused, batch)
    expected = assert_same_step(a, b, Y, dtype)
    got = torch.log_softmax(b[0], -1).view(-1)[batch.targets]  # training returns log-probabilities
    torch.testing.assert_close(got, expected, rtol=0, atol=TOL[dtype])
    assert batch.n_targets == int((Y != -1).sum()) == len(expected)


@pytest.mark.parametrize("kind", ["tanh", "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_either_tanh_of_the_fused_step_is_the_reference_step(kind, dtype, model, monkeypatch):
    """The step takes its tanh one of two ways by the machine (tree_fused.tanh_kind); both are
    proven here, whichever this machine would choose."""
    monkeypatch.setattr(tree_fused, "tanh_kind", lambda device: kind)
    X, Y = pad_names(WORDS, VOCAB, 8)
    ref, fused = model(8, dtype).train(), model(8, dtype).train()
    assert_same_step(step(ref, X, Y), step(fused, pack_padded(X, Y, 8, len(VOCAB))), Y, dtype)


@pytest.mark.parametrize("first", ["pairs", "split"])
@pytest.mark.parametrize("rest", ["pairs", "split"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_way_of_taking_the_taps_is_the_reference_step(first, rest, dtype, model, monkeypatch):
    """Each layer multiplies its pairs by its kernel one of two ways (tree_fused.layer_way
    decides by the batch); here layer 0 goes each way and the others each way, at block 32
    (dilations up to 16, so some layers have no row whose older input is inside its name)."""
    monkeypatch.setattr(tree_fused, "layer_way", lambda batch, level: first if level == 0 else rest)
    X, Y = pad_names(WORDS, VOCAB, 32)
    ref, fused = model(32, dtype).train(), model(32, dtype).train()
    assert_same_step(step(ref, X, Y), step(fused, pack_padded(X, Y, 32, len(VOCAB))), Y, dtype)


def test_the_ways_by_the_batch():
    """The rule: a layer split where at most a quarter of the rows read inside their name."""
    X, Y = pad_names(WORDS, VOCAB, 32)
    batch = pack_padded(X, Y, 32, len(VOCAB))
    inner = [len(r) / len(batch.ids) for r in batch.inner_rows]
    assert inner[-1] == 0 and inner[0] > 0.5  # a layer of each kind in this batch
    expected = ["split" if k <= 0.25 else "pairs" for k in inner]
    assert [tree_fused.layer_way(batch, level) for level in range(len(inner))] == expected


@pytest.mark.parametrize("block_size", [4, 8])
def test_ignored_targets_anywhere(block_size, model):
    """-1 inside a name, at output 0, at a name's end, and a row whose only real target is
    output 0: each drops that target only; the inputs still feed later positions."""
    X, Y = pad_names(WORDS, VOCAB, block_size)
    Y = Y.clone()
    Y[0, 2] = Y[3, 0] = Y[5, 4] = -1
    Y[6, len(WORDS[6])] = -1  # the end of "charlotte"
    Y[8, 1:] = -1  # "jo": output 0 only
    Y[9, :] = -1  # "x": nothing at all
    ref, fused = model(block_size).train(), model(block_size).train()
    batch = pack_padded(X, Y, block_size, len(VOCAB))
    expected = assert_same_step(step(ref, X, Y), step(fused, batch), Y, torch.float64)
    assert batch.n_targets == len(expected)


def assert_same_packing(a, b):
    """Every field of two `PackedNames` equal: the tensors, each layer's indices, the counts."""
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f.name
        elif isinstance(x, list):
            assert len(x) == len(y) and all(torch.equal(p, q) for p, q in zip(x, y)), f.name
        else:
            assert x == y, f.name


def test_extra_right_padding_packs_to_the_same_batch():
    X, Y = pad_names(WORDS, VOCAB, 8)
    a = pack_padded(X, Y, 8, len(VOCAB))
    b = pack_padded(torch.cat([X, torch.zeros(len(X), 5, dtype=torch.long)], 1),
                    torch.cat([Y, torch.full((len(Y), 5), -1)], 1), 8, len(VOCAB))
    assert_same_packing(a, b)


def test_packing_layout_by_hand():
    """Names 'ab' and 'c', vocabulary a=1 b=2 c=3, block 4: rows [c, a, b, c]."""
    batch = pack(torch.tensor([1, 2, 3]), torch.tensor([2, 1]), block_size=4, vocab_size=4)
    assert batch.ids.tolist() == [0, 1, 2, 3]
    # (older, newer) per row; dilation 1 then 2; the older input is row 0 outside the name
    assert batch.pairs[0].view(-1, 2).tolist() == [[0, 0], [0, 1], [1, 2], [0, 3]]
    assert batch.pairs[1].view(-1, 2).tolist() == [[0, 0], [0, 1], [0, 2], [0, 3]]
    assert batch.first_pairs.view(-1, 2).tolist() == [[0, 0], [0, 1], [1, 2], [0, 3]]
    # the same reads split: row 0 as the older input, or a row inside the name
    assert [m.tolist() for m in batch.reads_root] == [[1, 1, 0, 1], [1, 1, 1, 1]]
    assert [r.tolist() for r in batch.inner_rows] == [[2], []]
    assert [r.tolist() for r in batch.inner_older] == [[1], []]
    # row * V + target, name by name: 'a' read at row 0, 'b' after 'a', the boundary after 'b';
    # then 'c' at row 0 and the boundary after 'c'
    assert batch.targets.tolist() == [0 * 4 + 1, 1 * 4 + 2, 2 * 4 + 0, 0 * 4 + 3, 3 * 4 + 0]
    assert batch.weight.tolist() == [2, 1, 1, 1]


def test_packed_name_batches_hold_the_padded_batches_names():
    words = [w * k for w in WORDS for k in (1, 2, 3)]
    vocab = Vocab.from_words(words)
    packed = NameBatches(words, vocab, 8, 7, seed=3)
    padded = NameBatches(words, vocab, 8, 7, seed=3, packed=False)
    for _ in range(packed.per_epoch + 2):  # across an epoch boundary, and a short last batch
        a, none = packed.next()
        X, Y = padded.next()
        b = pack_padded(X, Y, 8, len(vocab))
        assert none is None and a.n_names == len(X)
        assert_same_packing(a, b)


def test_packed_eval_is_the_mlp_on_every_window(vocab, names, randomize_batchnorm):
    """In eval mode, the packed path's every log-probability, loss and gradient are the
    lecture's MLP's on the windows of the same names (the weights transferred by from_mlp)."""
    words = names[:200]
    g = torch.Generator().manual_seed(1)
    mlp = HierarchicalMLP(len(vocab), 16, n_embd=12, n_hidden=32, generator=g).double()
    randomize_batchnorm(mlp, g).eval()
    conv = ConvWaveNet.from_mlp(mlp)
    chars, lengths = packed_rows([vocab.encode(w) for w in words])
    batch = pack(chars, lengths, 16, len(vocab))
    logp, loss_c = conv(batch)
    Xw, Yw = build_windows(words, vocab, 16)
    logits, loss_m = mlp(Xw, Yw)
    torch.testing.assert_close(loss_c, loss_m, rtol=0, atol=1e-12)
    # every position: the target's log-probability, in the windows' order
    expected = torch.log_softmax(logits, -1)[torch.arange(len(Yw)), Yw]
    got = torch.log_softmax(logp, -1).view(-1)[batch.targets]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    loss_c.backward(), loss_m.backward()
    grads = dict(conv.named_parameters())
    for name, p in mlp.named_parameters():
        g = grads[name].grad
        g = g.permute(0, 2, 1).reshape(p.shape) if name.startswith("fuse.") else g
        torch.testing.assert_close(g, p.grad, rtol=0, atol=1e-12, msg=name)


def test_training_on_either_path_ends_at_the_same_weights(model):
    """40 SGD steps, batches of 5 names: packed + fused against pad_names + autograd."""
    words = [w * k for w in WORDS for k in (1, 2)]
    vocab = Vocab.from_words(words)
    ref = ConvWaveNet(len(vocab), 8, 6, 10, generator=torch.Generator().manual_seed(0)).double()
    fused, start = copy.deepcopy(ref), copy.deepcopy(ref.state_dict())
    for m, packed in ((ref, False), (fused, True)):
        batches = NameBatches(words, vocab, 8, 5, seed=0, packed=packed)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        for _ in range(40):
            _, loss = m(*batches.next())
            opt.zero_grad()
            loss.backward()
            opt.step()
    for (name, p), q in zip(ref.state_dict().items(), fused.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-10, msg=name)
        assert (p - start[name]).abs().max() > 1e-3, f"{name} did not move"


def test_kernels_stay_tap_major_so_the_step_never_copies_them(model):
    """The conv's kernels (H, C, 2) are views of (H, 2, C) blocks, so [tap 0 | tap 1] is a
    plain matrix for the fused step (layers.tap_major_conv). The layout survives a dtype
    change, a copy and loading a contiguous state dict, and the step's gradients match it."""
    m = model(8)
    contiguous = {k: v.contiguous() for k, v in m.state_dict().items()}  # as older checkpoints hold them
    for copy_of_m in (m, m.float(), copy.deepcopy(m)):
        copy_of_m.load_state_dict(contiguous)
        for conv in copy_of_m.fuse:
            assert conv.weight.transpose(1, 2).is_contiguous() and conv.weight.shape[2] == 2
    X, Y = pad_names(WORDS, VOCAB, 8)
    m = model(8).train()
    _, loss = m(pack_padded(X, Y, 8, len(VOCAB)))
    loss.backward()
    for conv in m.fuse:
        assert conv.weight.grad.stride() == conv.weight.stride()
