"""The training loop, the learning-rate schedule and the batch sources, directly."""

import math
import signal

import pytest
import torch
import torch.nn as nn

from wavenet.batches import NameBatches, WindowBatches, build_windows, make_batches
from wavenet.config import TrainConfig
from wavenet.data import Vocab
from wavenet.models import ConvWaveNet, HierarchicalMLP
from wavenet.train import Diverged, learning_rate_at, train_loop

WORDS = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "charlotte", "amelia", "jo", "x"]
VOCAB = Vocab.from_words(WORDS)


class Slope(nn.Module):
    """loss = w + c: the gradient is 1, so each SGD step moves w by exactly -lr. c keeps the
    loss positive (the loop logs log10 of it), or makes it the value given for that call."""

    def __init__(self, losses=None):
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.losses = losses  # optional: a fixed loss value per call (NaN to diverge)
        self.calls = 0

    def forward(self, X, Y):
        c = 1000.0 if self.losses is None else self.losses[self.calls] - self.w.detach()
        self.calls += 1
        return None, self.w + c


class Constant:
    def next(self):
        return torch.zeros(1), torch.zeros(1)


def test_schedule_drops_tenfold_after_decay_at():
    cfg = TrainConfig(max_steps=100, learning_rate=0.2, decay_at=0.75)
    assert [learning_rate_at(cfg, s) for s in (0, 74, 75, 99)] == [0.2, 0.2, 0.02, 0.02]
    assert learning_rate_at(TrainConfig(max_steps=10, decay_at=0.0), 0) == pytest.approx(0.01)
    assert learning_rate_at(TrainConfig(max_steps=10, decay_at=1.0), 9) == 0.1


def test_loop_runs_the_steps_with_the_schedule_and_calls_each_interval():
    model = Slope()
    cfg = TrainConfig(max_steps=10, learning_rate=0.1, decay_at=0.5, eval_interval=4)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate)
    calls, lossi = [], []
    result = train_loop(model, opt, Constant(), cfg, lossi=lossi, on_interval=calls.append, progress=False)
    assert (result.step, result.interrupted) == (10, False)
    assert calls == [4, 8, 10]  # every eval_interval steps, and at the end
    assert model.w.item() == pytest.approx(-(5 * 0.1 + 5 * 0.01), abs=1e-12)
    assert len(lossi) == 10


def test_loop_continues_from_start_step():
    model = Slope()
    cfg = TrainConfig(max_steps=10, learning_rate=0.1, decay_at=0.5, eval_interval=100)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate)
    lossi = [0.0] * 7
    result = train_loop(model, opt, Constant(), cfg, start_step=7, lossi=lossi, progress=False)
    assert result.step == 10 and model.calls == 3 and len(lossi) == 10
    assert model.w.item() == pytest.approx(-3 * 0.01, abs=1e-12)  # steps 7, 8, 9 at the low rate


def test_a_non_finite_loss_stops_before_the_update():
    model = Slope(losses=[1.0, 1.0, float("nan")])
    cfg = TrainConfig(max_steps=10, learning_rate=0.1, eval_interval=100)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate)
    with pytest.raises(Diverged, match="loss became nan at step 3: try a lower learning_rate") as info:
        train_loop(model, opt, Constant(), cfg, progress=False)
    assert info.value.param == "learning_rate"
    assert model.w.item() == pytest.approx(-0.2, abs=1e-12), "the two finite steps only"


def test_non_finite_weights_are_caught_at_the_interval():
    model = Slope(losses=[1e300] * 10)  # stays finite and positive while w runs off to -inf
    cfg = TrainConfig(max_steps=10, learning_rate=1e308, eval_interval=2)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate)
    with pytest.raises(Diverged, match="w became non-finite by step 2"):
        train_loop(model, opt, Constant(), cfg, progress=False, on_interval=lambda step: None)


def test_ctrl_c_finishes_the_step_and_returns_interrupted():
    model = Slope()
    cfg = TrainConfig(max_steps=1000, eval_interval=5)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate)
    before = signal.getsignal(signal.SIGINT)

    def press_ctrl_c(step):
        if step == 5:
            signal.raise_signal(signal.SIGINT)

    result = train_loop(model, opt, Constant(), cfg, on_interval=press_ctrl_c, progress=False)
    assert (result.step, result.interrupted) == (5, True)
    assert signal.getsignal(signal.SIGINT) is before, "the previous handler is restored"


def test_window_batches_are_the_lectures_draws_and_resume_exactly():
    X, Y = build_windows(WORDS, VOCAB, 8)
    batches = WindowBatches(X, Y, 32, torch.Generator().manual_seed(42))
    g = torch.Generator().manual_seed(42)
    for _ in range(3):  # the lecture: ix = torch.randint(0, Xtr.shape[0], (32,)); Xb, Yb = Xtr[ix], Ytr[ix]
        ix = torch.randint(0, X.shape[0], (32,), generator=g)
        xb, yb = batches.next()
        assert torch.equal(xb, X[ix]) and torch.equal(yb, Y[ix])
    state = batches.state_dict()
    later = [batches.next() for _ in range(3)]
    again = WindowBatches(X, Y, 32, torch.Generator())
    again.load_state_dict(state)
    for xb, yb in later:
        x2, y2 = again.next()
        assert torch.equal(xb, x2) and torch.equal(yb, y2)


def test_windows_cut_per_batch_are_the_lectures_windows(names, vocab):
    """WindowBatches.from_words (what `wavenet train` uses: ids kept flat, windows cut per
    batch) draws exactly the batches of the materialised build_windows."""
    X, Y = build_windows(names[:2000], vocab, 8)
    whole = WindowBatches(X, Y, 32, torch.Generator().manual_seed(42))
    flat = WindowBatches.from_words(names[:2000], vocab, 8, 32, torch.Generator().manual_seed(42))
    assert flat.X.untyped_storage().nbytes() < X.numel() * 8 / 4  # not materialised
    for _ in range(50):
        (xa, ya), (xb, yb) = whole.next(), flat.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_name_batches_cover_every_name_once_per_epoch_and_resume_exactly():
    words = [w * k for w in WORDS for k in (1, 2, 3)]
    vocab = Vocab.from_words(words)
    nb = NameBatches(words, vocab, 4, 7, seed=3, packed=False)
    seen = []
    for _ in range(nb.per_epoch):
        X, Y = nb.next()
        assert X.shape[0] <= 7 and X.shape[1] == 4 + Y.shape[1] - 1
        seen += [vocab.decode(x[4:][x[4:] != 0].tolist()) for x in X]
    assert sorted(seen) == sorted(words)
    later = [nb.next() for _ in range(5)]
    again = NameBatches(words, vocab, 4, 7, seed=3, packed=False)
    again.load_state_dict({"step": nb.per_epoch})
    for X, Y in later:
        X2, Y2 = again.next()
        assert torch.equal(X, X2) and torch.equal(Y, Y2)


def test_grouped_name_batches_hold_names_of_similar_length():
    words = [w * k for w in WORDS for k in (1, 2, 3, 4)]
    vocab = Vocab.from_words(words)
    plain = NameBatches(words, vocab, 4, 5, seed=0, packed=False)
    grouped = NameBatches(words, vocab, 4, 5, seed=0, group_by_length=8, packed=False)

    def padding(batches):
        Y = [batches.next()[1] for _ in range(batches.per_epoch)]
        return sum(int((y == -1).sum()) for y in Y)

    assert padding(grouped) < padding(plain)


def test_make_batches_picks_the_source_of_the_model_kind():
    cfg = TrainConfig(batch_size=4)
    mlp = HierarchicalMLP(len(VOCAB), n_embd=4, n_hidden=8)
    conv = ConvWaveNet(len(VOCAB), n_embd=4, n_hidden=8)
    windows = make_batches(mlp, WORDS, VOCAB, cfg, torch.Generator().manual_seed(0))
    names = make_batches(conv, WORDS, VOCAB, cfg, torch.Generator().manual_seed(0))
    assert isinstance(windows, WindowBatches) and windows.next()[0].shape == (4, 8)
    assert isinstance(names, NameBatches) and names.next()[0].n_names == 4
    for source, model in ((windows, mlp), (names, conv)):
        _, loss = model(*source.next())
        assert math.isfinite(loss.item())


WAVENET = ["--n-residual", "16", "--n-skip", "16"]


@pytest.mark.parametrize("kind, flags, exact", [
    ("mlp", [], False), ("wavenet", WAVENET + ["--norm", "rms"], False), ("conv", [], True),
    ("wavenet", WAVENET, False)])
def test_bf16_autocast_trains_in_float32_weights(kind, flags, exact, tmp_path, names_path, cli):
    """--dtype bf16 (autocast; here on the CPU, which has it too): the MLP's matrix products,
    and the WaveNet's (which then trains through autograd, with or without a norm), run in
    bfloat16, so their weights differ from a float32 run but stay float32 and close; the
    conv's hand-written step keeps float32 arithmetic exactly."""
    argv = ["train", "-i", names_path, "--model", kind, "--max-steps", "30", "--eval-interval", "30",
            "--batch-size", "32", "--no-progress", "-n", "0", *flags]
    runs = {}
    for dtype in ("float32", "bf16"):
        code, _, err = cli(*argv, "-o", tmp_path / dtype, "--dtype", dtype)
        assert code == 0, err
        runs[dtype] = torch.load(tmp_path / dtype / "checkpoint.pt", weights_only=True)
    assert runs["bf16"]["train_config"]["dtype"] == "bf16"
    a, b = runs["float32"]["model"], runs["bf16"]["model"]
    assert all(v.dtype == a[k].dtype for k, v in b.items())
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    if exact:
        assert diff == 0
    else:
        assert 0 < diff < 0.1, diff
        assert abs(runs["float32"]["lossi"][-1] - runs["bf16"]["lossi"][-1]) < 0.01


def test_the_train_loss_of_a_big_split_is_a_seeded_sample_said_so(tmp_path, tiny_file, cli, tiny_flags,
                                                                   monkeypatch):
    """Above TRAIN_SAMPLE train names (50,000; 20 here), training's end and `eval` score the
    same seeded sample of train and say so; val and test stay whole."""
    import wavenet.evaluate as evaluate
    words = [f"w{i}" for i in range(100)]
    assert evaluate.sample_for_loss(words, 100) == words
    sample = evaluate.sample_for_loss(words, 30, seed=5)
    assert len(set(sample)) == 30 and set(sample) < set(words) and sample == sorted(sample, key=words.index)
    assert sample == evaluate.sample_for_loss(words, 30, seed=5)
    assert sample != evaluate.sample_for_loss(words, 30, seed=6)
    monkeypatch.setattr(evaluate, "TRAIN_SAMPLE", 20)
    code, out, err = cli("train", "-i", tiny_file, "-o", tmp_path / "run", *tiny_flags)
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("train loss"))
    assert line.endswith("(a seeded sample of 20 of 28 train names)")
    code, out, err = cli("eval", "-o", tmp_path / "run", "--weights", "last")
    assert code == 0, err
    rows = {line[:11].strip(): line for line in out.splitlines()}
    assert rows["train"].endswith("20 names of 28: a seeded sample)")
    assert line.split()[2] == rows["train"].split()[2]  # the same names scored, the same weights
    assert rows["val"].endswith(", 3 names)") and rows["test"].endswith(", 4 names)")


def test_plain_sgd_is_torch_sgd_bit_for_bit_and_loads_its_state():
    """make_optimizer's "sgd" (PlainSGD) against torch.optim.SGD (foreach, no momentum) on a
    ConvWaveNet's packed training steps: the same weights after every step, to the last bit,
    with a parameter left without a gradient; each loads the other's state_dict."""
    from wavenet.train import PlainSGD, make_optimizer

    models = [ConvWaveNet(len(VOCAB), 8, 6, 16, generator=torch.Generator().manual_seed(0)).train()
              for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    ours = make_optimizer(models[0], TrainConfig(learning_rate=0.3))
    theirs = torch.optim.SGD(models[1].parameters(), lr=0.3, foreach=True)
    assert isinstance(ours, PlainSGD)
    batches = NameBatches(WORDS, VOCAB, 8, 4, seed=1)
    bias = models[0].head.bias.detach().clone()
    for step in range(5):
        batch, _ = batches.next()
        for m, opt in zip(models, (ours, theirs)):
            opt.param_groups[0]["lr"] = 0.3 / (1 + step)
            opt.zero_grad(set_to_none=True)
            m(batch)[1].backward()
            m.head.bias.grad = None  # a parameter without a gradient this step stays where it is
            opt.step()
        for a, b in zip(models[0].parameters(), models[1].parameters()):
            assert torch.equal(a, b)
    assert torch.equal(models[0].head.bias, bias)
    assert any(p.grad is not None for p in models[0].parameters())
    ours.zero_grad()
    assert all(p.grad is None for p in models[0].parameters())
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"] == 0.3 / 5
