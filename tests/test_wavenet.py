"""The gated residual WaveNet: its contract, causality, receptive field, padding, packing,
cached generation, parameter count and recipe."""

import math
from dataclasses import replace

import pytest
import torch

from wavenet import checkpoint as ckpt_io
from wavenet.batches import NameBatches, make_batches, pack_padded, pad_names
from wavenet.checkpoint import load_checkpoint
from wavenet.config import RECIPES, TrainConfig, WaveNetConfig
from wavenet.data import Vocab
from wavenet.models import WaveNet, parameter_count
from wavenet.sample import generate
from wavenet.train import learning_rate_at, make_optimizer

WORDS = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "charlotte", "amelia", "jo", "x"]
VOCAB = Vocab.from_words(WORDS)
SHAPES = [dict(n_layers=2, n_cycles=1, head_layers=2), dict(n_layers=3, n_cycles=2, head_layers=2),
          dict(n_layers=2, n_cycles=2, head_layers=1),
          dict(n_layers=4, n_cycles=1, norm="layer", head_layers=2),
          dict(n_layers=2, n_cycles=3, norm="rms", head_layers=1)]


def make(dtype=torch.float64, seed=0, dropout=0.0, **shape):
    g = torch.Generator().manual_seed(seed)
    m = WaveNet(len(VOCAB), n_residual=6, n_skip=5, dropout=dropout, generator=g, **shape).to(dtype)
    with torch.no_grad():  # biases and norm gains away from their init, so each one matters
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=dtype))
    return m


@pytest.mark.parametrize("shape", SHAPES + [dict(), dict(n_residual=32, n_skip=48, n_layers=5, norm="layer")])
def test_parameter_count_from_the_config(shape):
    config = WaveNetConfig(**shape)
    model = WaveNet(27, **shape)
    assert sum(p.numel() for p in model.parameters()) == parameter_count(config, 27)
    assert model.block_size == model.receptive_field == config.block_size == 1 + sum(config.dilations)


def test_default_shape_and_first_loss():
    """Three cycles of dilations 1, 2, 4: receptive field 22, a one-layer head, 1,183,899
    parameters on names (vocabulary 27); the first loss is close to ln(27), the loss of a
    uniform guess."""
    m = WaveNet(27, generator=torch.Generator().manual_seed(42))
    assert m.dilations == [1, 2, 4] * 3 and m.block_size == 22 and m.hidden is None
    # 27 x 128 embedding; 9 blocks of a (256, 256) kernel + 256 and a 1x1 into [128 residual | 384 skip]
    # (the last block: skip only); the head 384 -> 27
    blocks = 9 * (256 * 256 + 256) + 8 * (128 * 512 + 512) + (128 * 384 + 384)
    assert sum(p.numel() for p in m.parameters()) == 27 * 128 + blocks + 384 * 27 + 27 == 1_183_899
    X, Y = pad_names(WORDS, VOCAB, m.block_size)
    _, loss = m.train()(X, Y)
    assert abs(loss.item() - math.log(27)) < 0.05


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [False, True])
def test_causal_exactly_in_eval_and_training_mode(shape, training):
    """Changing ids after position t changes no output at or before t; in training mode,
    with dropout (on the blocks and the embeddings), given the same random stream (the
    masks have the same shape)."""
    m = make(dropout=0.3 if training else 0.0, embd_dropout=0.2 if training else 0.0, **shape).train(training)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, len(VOCAB), (3, m.block_size + 12), generator=g)
    torch.manual_seed(7)
    base, _ = m(idx)  # (B, 13, V): output j at position block_size - 1 + j
    for t in range(m.block_size - 1, idx.shape[1] - 1):
        changed = idx.clone()
        changed[:, t + 1:] = torch.randint(0, len(VOCAB), changed[:, t + 1:].shape, generator=g)
        torch.manual_seed(7)
        out, _ = m(changed)
        j = t - m.block_size + 1
        assert torch.equal(out[:, :j + 1], base[:, :j + 1]), t
        assert not torch.equal(out[:, j + 1:], base[:, j + 1:]), t  # the future did change


@pytest.mark.parametrize("shape", SHAPES)
def test_receptive_field_is_exactly_block_size(shape):
    """Output j sees idx[j : j + block_size]: an id block_size positions before the
    prediction changes nothing, one position closer changes it."""
    m = make(**shape).eval()
    n = m.block_size
    idx = torch.randint(1, len(VOCAB), (1, 2 * n), generator=torch.Generator().manual_seed(2))
    base, _ = m(idx)
    last = idx.shape[1] - 1  # the last output predicts after position `last`
    far, near = idx.clone(), idx.clone()
    far[0, last - n] = (far[0, last - n] % (len(VOCAB) - 1)) + 1  # another id, block_size back
    near[0, last - n + 1] = (near[0, last - n + 1] % (len(VOCAB) - 1)) + 1  # one closer
    assert torch.equal(m(far)[0][:, -1], base[:, -1])
    assert not torch.allclose(m(near)[0][:, -1], base[:, -1], rtol=0, atol=1e-9)


def _step(m, batch):
    m.zero_grad()
    logits, loss = m(*batch) if isinstance(batch, tuple) else m(batch)
    loss.backward()
    return logits, loss, {n: p.grad.clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [False, True])
def test_extra_padding_changes_nothing(shape, training):
    """Outputs, loss and every gradient, with and without 5 more padded positions (dropout 0)."""
    m = make(**shape).train(training)
    X, Y = pad_names(WORDS, VOCAB, m.block_size)
    Xp = torch.cat([X, torch.zeros(len(X), 5, dtype=torch.long)], 1)
    Yp = torch.cat([Y, torch.full((len(Y), 5), -1)], 1)
    a, b = _step(m, (X, Y)), _step(m, (Xp, Yp))
    real = Y != -1
    torch.testing.assert_close(b[0][:, :Y.shape[1]][real], a[0][real], rtol=0, atol=1e-12)
    torch.testing.assert_close(b[1], a[1], rtol=0, atol=1e-12)
    for name in a[2]:
        torch.testing.assert_close(b[2][name], a[2][name], rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("training", [True, False])
def test_the_packed_path_is_the_padded_function(shape, dtype, tol, training):
    """The packed path (no prefix or padding computed, one shared boundary row), in training
    and in eval mode, gives the padded reference's loss, every gradient and every real
    target's log-probability (dropout 0)."""
    m = make(dtype=dtype, **shape).train(training)
    X, Y = pad_names(WORDS, VOCAB, m.block_size)
    Y[2, 1] = -1  # an ignored target inside a name
    Y[4, 0] = -1  # and one at output 0
    batch = pack_padded(X, Y, m.block_size, len(VOCAB), m.dilations)
    a, b = _step(m, (X, Y)), _step(m, batch)
    torch.testing.assert_close(b[1], a[1], rtol=0, atol=tol)
    for name in a[2]:
        torch.testing.assert_close(b[2][name], a[2][name], rtol=tol, atol=tol, msg=name)
    padded = torch.log_softmax(a[0], -1)
    real = Y != -1
    packed = torch.log_softmax(b[0], -1).view(-1)[batch.targets]
    torch.testing.assert_close(packed, padded.gather(2, Y.clamp(min=0)[..., None])[..., 0][real],
                               rtol=0, atol=tol)


FUSED_SHAPES = [dict(n_layers=2, n_cycles=1, head_layers=2), dict(n_layers=3, n_cycles=2, head_layers=2),
                dict(n_layers=1, n_cycles=1, head_layers=2), dict(n_layers=2, n_cycles=2, head_layers=1)]


@pytest.mark.parametrize("shape", FUSED_SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("dropouts", [dict(), dict(dropout=0.4), dict(dropout=0.3, embd_dropout=0.2),
                                      dict(dropout=0.4, tar=0.3),
                                      dict(dropout=0.3, embd_dropout=0.2, tar=0.3)])
def test_the_hand_written_step_is_the_autograd_step(shape, dtype, tol, dropouts):
    """wavenet_fused.py against autograd through the same blocks on the same packed batch:
    the loss, every gradient (each one nonzero) and the logits, with the same seed, so with
    the same dropout masks, with and without TAR (which reads relu(skip) before the head's
    dropout); ignored targets inside a name and at output 0. With dropout 0 the test above
    ties both to the padded reference too."""
    m = make(dtype=dtype, **dropouts, **shape).train()
    X, Y = pad_names(WORDS, VOCAB, m.block_size)
    Y[2, 1] = Y[4, 0] = -1
    batch = pack_padded(X, Y, m.block_size, len(VOCAB), m.dilations)
    steps = []
    for fused in (False, True):
        m.fused = fused
        torch.manual_seed(7)
        steps.append(_step(m, batch))
    (logits, loss, grads), (logits_f, loss_f, grads_f) = steps
    assert loss_f.grad_fn.name() == "FusedWaveNetBackward"  # the hand-written step ran
    torch.testing.assert_close(loss_f, loss, rtol=0, atol=tol)
    torch.testing.assert_close(logits_f, logits, rtol=0, atol=tol)
    for name in grads:
        assert grads[name].abs().max() > 0, name
        torch.testing.assert_close(grads_f[name], grads[name], rtol=tol, atol=tol, msg=name)


def _change_penalty_by_hand(m, words):
    """TAR's penalty from first principles: each name alone, in eval mode, the head's input
    relu(skip) at every output caught on its way into the head's dropout; the squared change
    from each output to the one before, summed over the names' characters, over (M S)."""
    caught = []
    hook = m.drop.register_forward_hook(lambda mod, args, out: caught.append(args[0].detach()))
    total, n_chars = 0.0, 0
    with torch.no_grad():
        for w in words:
            X, _ = pad_names([w], VOCAB, m.block_size)
            m.eval()(X)
            r = caught.pop()[0]  # (len(w) + 1, S): outputs 0 .. len(w)
            for j in range(1, len(w) + 1):
                total += float(((r[j] - r[j - 1]) ** 2).sum())
            n_chars += len(w)
    hook.remove()
    return total / (n_chars * m.config.n_skip)


@pytest.mark.parametrize("shape", FUSED_SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_tar_is_one_penalty_on_every_path(shape, dtype, tol):
    """--tar: in training, the loss gains tar x the mean squared change of relu(skip) from
    each character's position to the one before (computed here name by name, in Python);
    the padded reference, the packed reference and the hand-written step give that loss
    and the same gradients, each of which the penalty moves; eval mode adds nothing."""
    tar = 0.7
    m = make(dtype=dtype, tar=tar, **shape)
    X, Y = pad_names(WORDS, VOCAB, m.block_size)
    Y[2, 1] = Y[4, 0] = -1  # ignored targets move the cross-entropy, not the penalty
    batch = pack_padded(X, Y, m.block_size, len(VOCAB), m.dilations)
    penalty = _change_penalty_by_hand(m, WORDS)
    assert penalty > 1e-3
    m.train()
    padded = _step(m, (X, Y))
    m.fused = False
    packed = _step(m, batch)
    m.fused = True
    fused = _step(m, batch)
    assert fused[1].grad_fn.name() == "FusedWaveNetBackward"
    plain = make(dtype=dtype, **shape).train()
    without = _step(plain, (X, Y))
    torch.testing.assert_close(padded[1], without[1] + tar * penalty, rtol=0, atol=tol)
    for other in (packed, fused):
        torch.testing.assert_close(other[1], padded[1], rtol=0, atol=tol)
        for name in padded[2]:
            torch.testing.assert_close(other[2][name], padded[2][name], rtol=tol, atol=tol, msg=name)
    moved = [name for name in padded[2] if not torch.allclose(padded[2][name], without[2][name])]
    after = {name for name in padded[2] if name.startswith(("head.", "hidden."))}  # read relu(skip)
    assert set(moved) == set(padded[2]) - after
    with torch.no_grad():
        assert m.eval()(X, Y)[1].item() == plain.eval()(X, Y)[1].item()
        assert m(batch)[1].item() == plain(batch)[1].item()


def test_under_autocast_the_training_step_is_the_reference_in_bf16():
    """--dtype bf16: the hand-written step is float32 as written, so under autocast the model
    trains through autograd, whose products autocast runs in bfloat16: the same loss as the
    reference under autocast, bit for bit, and close to (not equal to) the float32 step.
    The model is float32: autocast leaves float64 arithmetic as it is."""
    m = make(torch.float32, n_layers=2, n_cycles=2).train()
    X, Y = pad_names(WORDS, VOCAB, m.block_size)
    batch = pack_padded(X, Y, m.block_size, len(VOCAB), m.dilations)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_bf16 = m(batch)[1]
        m.fused = False
        loss_ref = m(batch)[1]
    m.fused = True
    loss_f32 = m(batch)[1]
    assert loss_f32.grad_fn.name() == "FusedWaveNetBackward"
    assert loss_bf16.grad_fn.name() != "FusedWaveNetBackward"
    assert loss_bf16.item() == loss_ref.item()
    assert 0 < abs(loss_bf16.item() - loss_f32.item()) < 0.05


def test_the_hand_written_step_keeps_the_kernels_gradient_tap_major():
    m = make(n_layers=3, n_cycles=1).train()
    X, Y = pad_names(WORDS, VOCAB, m.block_size)
    m(pack_padded(X, Y, m.block_size, len(VOCAB), m.dilations))[1].backward()
    for block in m.blocks:
        assert block.conv.weight.grad.stride() == block.conv.weight.stride()


def test_the_hand_written_step_trains_like_autograd():
    """Ten AdamW steps with clipping and dropout on each path end at the same weights."""
    ends = []
    for fused in (False, True):
        m = make(dropout=0.3, embd_dropout=0.1, n_layers=2, n_cycles=2).train()
        m.fused = fused
        cfg = replace(RECIPES["wavenet"], batch_size=4)
        batches = make_batches(m, WORDS, VOCAB, cfg, torch.Generator().manual_seed(1))
        opt = make_optimizer(m, cfg)
        start = {k: v.clone() for k, v in m.state_dict().items()}
        torch.manual_seed(3)
        for _ in range(10):
            opt.zero_grad(set_to_none=True)
            m(batches.next()[0])[1].backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
        ends.append(m.state_dict())
    for name, p in ends[0].items():
        torch.testing.assert_close(ends[1][name], p, rtol=0, atol=1e-10, msg=name)
        assert (p - start[name]).abs().max() > 1e-3, f"{name} did not move"


def test_name_batches_pack_the_wavenets_dilations():
    m = make(n_layers=3, n_cycles=2).train()
    batches = make_batches(m, WORDS, VOCAB, replace(RECIPES["wavenet"], batch_size=8), torch.Generator())
    assert isinstance(batches, NameBatches)
    batch, _ = batches.next()
    assert len(batch.pairs) == len(m.blocks) == 6
    assert batch.pairs[0] is batch.pairs[3]  # one index per distinct dilation
    padded = NameBatches(WORDS, VOCAB, m.block_size, 8, RECIPES["wavenet"].seed, packed=False)
    X, Y = padded.next()
    torch.testing.assert_close(m(batch)[1], m(X, Y)[1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_cached_generation_equals_the_full_forward_at_every_step(shape):
    m = make(**shape).eval()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, len(VOCAB), (4, 2 * m.block_size), generator=g)
    cache = m.new_cache(4)
    logits = cache.logits
    for t in range(ids.shape[1]):
        seq = torch.cat([torch.zeros(4, m.block_size, dtype=torch.long), ids[:, :t]], 1)
        full = m(seq)[0][:, -1]
        torch.testing.assert_close(logits, full, rtol=0, atol=1e-12, msg=f"step {t}")
        logits = m.step(ids[:, t], cache)


@pytest.mark.parametrize("prefix", [(), (5, 1)])
def test_cached_and_full_sampling_draw_the_same_names(prefix):
    m = make(dtype=torch.float32, n_layers=3, n_cycles=2, norm="layer").eval()
    kw = dict(temperature=1.3, prefix=prefix, max_new_tokens=25)
    cached = generate(m, 40, generator=torch.Generator().manual_seed(5), method="cached", **kw)
    full = generate(m, 40, generator=torch.Generator().manual_seed(5), method="full", **kw)
    assert cached == full
    default = generate(m, 40, generator=torch.Generator().manual_seed(5), **kw)
    assert default == cached  # cached is the default
    assert len({tuple(n) for n in cached}) > 10


@pytest.mark.parametrize("dropouts", [dict(dropout=0.5), dict(embd_dropout=0.5)])
def test_dropout_acts_in_training_only(dropouts):
    m = make(n_layers=2, n_cycles=1, **dropouts)
    X, Y = pad_names(WORDS, VOCAB, m.block_size)
    m.eval()
    assert torch.equal(m(X)[0], m(X)[0])
    m.train()
    assert not torch.equal(m(X)[0], m(X)[0])
    batch = pack_padded(X, Y, m.block_size, len(VOCAB), m.dilations)
    assert m(batch)[1] != m(batch)[1]
    m.embd_drop.p = m.drop.p = 0.0
    for block in m.blocks:
        block.drop.p = 0.0
    assert torch.equal(m(X)[0], m(X)[0])  # what changed the outputs was dropout


# ---------------------------------------------------------------------- the recipe

def test_warmup_then_cosine_down_to_a_tenth():
    cfg = TrainConfig(max_steps=1000, learning_rate=1.0, warmup=100, schedule="cosine", optimizer="adamw")
    rates = [learning_rate_at(cfg, s) for s in range(1000)]
    assert rates[0] == pytest.approx(0.01) and rates[49] == pytest.approx(0.5) and rates[99] == 1.0
    assert rates[100] == 1.0 and rates[999] == pytest.approx(0.1)
    assert rates[100 + 899 // 2] == pytest.approx(0.55, abs=1e-3)  # halfway down the cosine
    assert all(a >= b for a, b in zip(rates[100:], rates[101:]))
    to_zero = TrainConfig(max_steps=1000, learning_rate=1.0, warmup=100, schedule="cosine", final_lr=0.0)
    assert learning_rate_at(to_zero, 999) == 0.0 and learning_rate_at(to_zero, 100) == 1.0
    assert learning_rate_at(to_zero, 100 + 899 // 2) == pytest.approx(0.5, abs=1e-3)
    step = TrainConfig(max_steps=100, learning_rate=1.0, warmup=10, decay_at=0.5)
    assert [learning_rate_at(step, s) for s in (0, 9, 10, 49, 50)] == [0.1, 1.0, 1.0, 1.0, 0.1]


def test_adamw_decays_the_matrices_only():
    m = make(n_layers=2, n_cycles=1, norm="layer")
    opt = make_optimizer(m, TrainConfig(optimizer="adamw", weight_decay=0.1, learning_rate=1e-3))
    assert isinstance(opt, torch.optim.AdamW)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(p) for p in m.parameters() if p.dim() >= 2}
    assert len(plain["params"]) == sum(p.dim() == 1 for p in m.parameters()) > 0


@pytest.mark.parametrize("given,message", [
    (dict(optimizer="adam"), "optimizer must be one of sgd, adamw"),
    (dict(schedule="linear"), "schedule must be one of step, cosine"),
    (dict(dtype="fp16"), "dtype must be one of float32, bf16"),
    (dict(weight_decay=0.1), "weight_decay needs optimizer adamw"),
    (dict(warmup=-1), "warmup must be at least 0"),
    (dict(grad_clip=-1.0), "grad_clip must be at least 0"),
    (dict(final_lr=1.5), "final_lr must be a fraction between 0 and 1"),
])
def test_recipe_mistakes(given, message):
    with pytest.raises(Exception, match=message):
        TrainConfig(**given)


@pytest.mark.parametrize("given,message", [
    (dict(norm="batch"), "norm must be one of none, layer, rms"),
    (dict(dropout=1.0), "dropout must be at least 0 and below 1"),
    (dict(embd_dropout=-0.1), "embd_dropout must be at least 0 and below 1"),
    (dict(n_cycles=0), "n_cycles must be at least 1"),
    (dict(head_layers=3), "head_layers must be 1 or 2, got 3"),
    (dict(tar=-0.1), "tar must be a finite number at least 0, got -0.1"),
    (dict(tar=math.inf), "tar must be a finite number at least 0, got inf"),
    (dict(tar=math.nan), "tar must be a finite number at least 0, got nan"),
])
def test_model_mistakes(given, message):
    with pytest.raises(Exception, match=message):
        WaveNetConfig(**given)


# ---------------------------------------------------------------------- the CLI

TINY = ["--model", "wavenet", "--n-residual", "6", "--n-skip", "5", "--n-layers", "2", "--n-cycles", "2",
        "--max-steps", "40", "--eval-interval", "10", "--batch-size", "8", "--warmup", "5", "--no-progress",
        "-n", "0"]


@pytest.mark.parametrize("head_layers", [1, 2])
def test_either_head_trains_samples_and_evaluates(head_layers, tmp_path, tiny_file, cli):
    """--head-layers 1 (the default) or 2 (the paper's): the checkpoint records it, holds a
    hidden layer only with 2, and sample and eval rebuild the same model from it."""
    run = tmp_path / "run"
    code, _, err = cli("train", "-o", run, "-i", tiny_file, *TINY, "--head-layers", head_layers)
    assert code == 0, err
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["model_config"]["head_layers"] == head_layers
    assert any(name.startswith("hidden.") for name in ckpt["model"]) == (head_layers == 2)
    model, vocab = ckpt_io.model_from_checkpoint(ckpt)
    assert sum(p.numel() for p in model.parameters()) == parameter_count(model.config, len(vocab))
    for command in ("sample", "eval"):
        code, out, err = cli(command, "-o", run)
        assert code == 0 and out, err


@pytest.mark.parametrize("dropout", [["--dropout", "0.2"], ["--dropout", "0.1", "--final-dropout", "0.5"]],
                         ids=["fixed", "ramped"])
def test_resume_is_bit_identical_with_dropout_adamw_and_clipping(dropout, tmp_path, tiny_file, cli,
                                                                  copy_checkpoint_at, scores_of):
    """40 steps straight == 20, then --resume for 20, with dropout 0.2 (the random stream is
    in the checkpoint) or ramped from 0.1 to 0.5 (a function of the step and the recorded
    recipe), AdamW, warm-up, cosine decay and gradient clipping that bites."""
    resumed = tmp_path / "resumed"
    with copy_checkpoint_at(20, resumed):
        code, _, err = cli("train", "-o", tmp_path / "straight", "-i", tiny_file, *TINY, *dropout,
                           "--grad-clip", "0.5")
    assert code == 0, err
    code, out, err = cli("train", "-o", resumed, "--resume")
    assert code == 0 and "resuming" in out, err
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(resumed / "checkpoint.pt")
    assert a["step"] == b["step"] == 40 and a["train_config"]["optimizer"] == "adamw"
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
        assert torch.equal(a["best"]["model"][name], b["best"]["model"][name]), name
    assert torch.equal(a["lossi"], b["lossi"]) and torch.equal(a["rng"], b["rng"])
    assert str(a["optimizer"]) == str(b["optimizer"])
    assert scores_of(tmp_path / "straight") == scores_of(resumed) and len(scores_of(resumed)) == 4


def test_the_best_weights_are_kept_and_used_unless_told(tmp_path, tiny_file, cli):
    """The checkpoint keeps the weights of the lowest val loss in metrics.jsonl; eval and
    sample use them, --weights last the last ones."""
    import json

    work = tmp_path / "run"
    code, out, err = cli("train", "-i", tiny_file, "-o", work, *TINY, "--learning-rate", "0.05")
    assert code == 0, err
    ckpt = load_checkpoint(work / "checkpoint.pt")
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    best = min(records, key=lambda r: r["val_loss"])
    assert ckpt["best"]["step"] == best["step"] and ckpt["best"]["val_loss"] == best["val_loss"]
    assert f"best val loss {best['val_loss']:.4f} at step {best['step']:,}" in out
    # make the two sets of weights differ visibly, then ask for each
    bias = ckpt["best"]["model"]["head.bias"]
    ckpt["best"]["model"]["head.bias"] = bias + 5 * torch.arange(float(len(bias)))
    ckpt_io.save_checkpoint(work / "checkpoint.pt",
                            {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    evals = {w: cli("eval", "-o", work, "--weights", w)[1] for w in ("best", "last")}
    assert cli("eval", "-o", work)[1] == evals["best"] != evals["last"]
    val_last = float(evals["last"].splitlines()[1].split()[2])
    assert val_last == pytest.approx(records[-1]["val_loss"], abs=1e-4)


def test_eval_reports_the_names_not_in_train(tmp_path, cli):
    """With names repeated across the split, 'unseen' counts exactly the held-out names
    that train does not hold."""
    from tests.conftest import TINY_WORDS
    from wavenet.data import load_words, split_words

    path = tmp_path / "dup.txt"
    path.write_text("\n".join(TINY_WORDS + TINY_WORDS[:20]) + "\n")
    work = tmp_path / "run"
    code, _, err = cli("train", "-i", path, "-o", work, *TINY)
    assert code == 0, err
    code, out, err = cli("eval", "-o", work)
    assert code == 0, err
    train, val, test = split_words(load_words(path))
    rows = {line[:11].strip(): line[11:] for line in out.splitlines()}
    assert list(rows) == ["train", "val", "test", "val unseen", "test unseen"]
    for split, held in (("val", val), ("test", test)):
        unseen = [w for w in held if w not in set(train)]
        assert len(unseen) < len(held)  # the repeats reach this split
        if unseen:
            counts = f"({sum(len(w) + 1 for w in unseen):,} targets, {len(unseen):,} names)"
            assert counts in rows[f"{split} unseen"]
        else:
            assert "no names" in rows[f"{split} unseen"]


def test_flags_of_another_kind_are_refused(tmp_path, tiny_file, cli, one_line_error):
    one_line_error(*cli("train", "-i", tiny_file, "-o", tmp_path / "a", "--model", "wavenet",
                        "--block-size", "8")[::2], "--block-size does not apply to a 'wavenet' model")
    one_line_error(*cli("train", "-i", tiny_file, "-o", tmp_path / "b", "--n-cycles", "2")[::2],
                   "--n-cycles does not apply to a 'conv' model")
    one_line_error(*cli("train", "-i", tiny_file, "-o", tmp_path / "c", *TINY, "--norm", "batch")[::2],
                   "--norm must be one of none, layer, rms")
    one_line_error(*cli("train", "-i", tiny_file, "-o", tmp_path / "d", *TINY, "--head-layers", "3")[::2],
                   "--head-layers must be 1 or 2, got 3")
    one_line_error(*cli("train", "-i", tiny_file, "-o", tmp_path / "e", *TINY, "--tar", "-1")[::2],
                   "--tar must be a finite number at least 0, got -1.0")


@pytest.mark.parametrize("shape", SHAPES)
def test_the_paper_block_written_with_conv1d(shape):
    """The model against the paper's network written plainly with `F.conv1d` on (B, C, T):
    a dilated kernel-2 conv into filter and gate, tanh * sigmoid, 1x1 into the residual and
    skip streams, relu -> 1x1 -> relu -> 1x1 on the skip sum, or relu -> 1x1 with one head
    layer (eval mode)."""
    m = make(**shape).eval()
    X, _ = pad_names(WORDS, VOCAB, m.block_size)
    P = X.shape[1] - m.block_size + 1
    x, skip = m.wte(X).transpose(1, 2), 0  # (B, C, T)
    for block in m.blocks:
        u = block.norm(x.transpose(1, 2)).transpose(1, 2)  # per position, over channels
        h = torch.conv1d(u, block.conv.weight, block.conv.bias, dilation=block.dilation)  # (B, 2C, T - d)
        f, g = h.chunk(2, 1)
        o = torch.conv1d(torch.tanh(f) * torch.sigmoid(g), block.proj.weight[:, :, None], block.proj.bias)
        if block.residual:
            x = x[:, :, block.dilation:] + o[:, :block.residual]
        skip = skip + o[:, block.residual:, -P:]  # (B, S, P)
    hidden = torch.relu(skip)
    if shape["head_layers"] == 2:
        hidden = torch.relu(torch.conv1d(hidden, m.hidden.weight[:, :, None], m.hidden.bias))
    else:
        assert m.hidden is None
    logits = torch.conv1d(hidden, m.head.weight[:, :, None], m.head.bias)  # (B, V, P)
    torch.testing.assert_close(m(X)[0], logits.transpose(1, 2), rtol=0, atol=1e-12)


def test_norms_work_per_position_over_channels():
    from wavenet.models.wavenet import RMSNorm
    x = torch.randn(3, 7, 16, dtype=torch.float64) * 5 + 2
    y = RMSNorm(16).double()(x)
    torch.testing.assert_close(y.square().mean(-1), torch.ones(3, 7, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(RMSNorm(16).double()(x[:, :3]), y[:, :3], rtol=0, atol=0)  # no mixing
    m = make(n_layers=2, n_cycles=1, norm="layer")
    assert isinstance(m.blocks[0].norm, torch.nn.LayerNorm) and m.blocks[0].norm.normalized_shape == (6,)


def test_a_bad_weights_choice_is_one_line(tmp_path, cli, one_line_error):
    for command in ("eval", "sample"):
        one_line_error(*cli(command, "-o", tmp_path, "--weights", "middle")[::2],
                       "argument --weights: invalid choice: 'middle'")
