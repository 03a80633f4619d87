"""An ensemble is the mean of its members' distributions, exactly, on every path that reads a
model (split losses, cached and full sampling), and `wavenet train --ensemble N` trains its
members as the plain runs of their seeds would, keeps them through Ctrl-C, and resumes them."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import wavenet
from wavenet.batches import build_windows, eval_batches, pad_names
from wavenet.errors import WavenetError
from wavenet.evaluate import batch_nll, split_loss, target_nll
from wavenet.models import LSTM, Ensemble, HierarchicalMLP, Transformer, WaveNet
from wavenet.models.ensemble import mean_of_distributions
from wavenet.rundir import RunDir, load_split
from wavenet.sample import generate, make_stepper
from wavenet.scoring import score

SMALL = {  # members of each kind, small; float64, so that the sums compare to 1e-12
    "wavenet": lambda g: WaveNet(27, n_layers=2, n_cycles=2, n_residual=8, n_skip=12, generator=g),
    "lstm": lambda g: LSTM(27, n_embd=8, n_hidden=12, n_layers=2, generator=g),
    "transformer": lambda g: Transformer(27, n_embd=8, n_head=2, n_layers=1, generator=g),
    "mlp": lambda g: HierarchicalMLP(27, n_embd=4, n_hidden=8, generator=g),
}


def members(kind, n):
    out = []
    for seed in range(n):
        m = SMALL[kind](torch.Generator().manual_seed(seed)).double().eval()
        with torch.no_grad():  # weights far from their init, so the members disagree
            for p in m.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(100 + seed),
                                         dtype=p.dtype))
        out.append(m)
    return out


def test_mean_of_distributions_is_the_log_of_the_mean_probability():
    g = torch.Generator().manual_seed(0)
    logits = [4 * torch.randn(3, 5, 27, generator=g, dtype=torch.float64) for _ in range(3)]
    want = torch.stack([torch.softmax(x, -1) for x in logits]).mean(0).log()
    torch.testing.assert_close(mean_of_distributions(logits), want, rtol=0, atol=1e-12)
    far = [torch.tensor([[0.0, -800.0]], dtype=torch.float64), torch.tensor([[-800.0, 0.0]],
                                                                              dtype=torch.float64)]
    assert torch.isfinite(mean_of_distributions(far)).all(), "no underflow to log(0)"


@pytest.mark.parametrize("kind", ["wavenet", "lstm", "transformer", "mlp"])
def test_split_loss_is_minus_log_of_the_members_mean_probability(kind, vocab, names):
    """Each target's probability under the ensemble is the mean of the members' (computed
    here from each member's own per-target losses); the split loss averages its -log."""
    words = names[:300]
    ms = members(kind, 3)
    ensemble = Ensemble(ms)
    total, count = 0.0, 0
    for X, Y in eval_batches(ms[0], words, vocab):
        with torch.no_grad():
            p = torch.stack([torch.exp(-batch_nll(m, X, Y, "cpu")) for m in ms]).mean(0)
        total += -torch.log(p).sum().item()
        count += len(p)
    assert split_loss(ensemble, words, vocab) == pytest.approx(total / count, abs=1e-12)
    assert len({round(split_loss(m, words, vocab), 6) for m in ms}) == 3, "the members differ"


@pytest.mark.parametrize("kind", ["wavenet", "lstm"])
def test_one_member_is_that_member(kind, vocab, names):
    [m] = members(kind, 1)
    batches = list(eval_batches(m, names[:100], vocab))
    with torch.no_grad():
        for X, _ in batches:
            want = torch.log_softmax(m(X)[0], -1)
            torch.testing.assert_close(Ensemble([m])(X)[0], want, rtol=0, atol=1e-12)
    assert split_loss(Ensemble([m]), names[:100], vocab) == pytest.approx(split_loss(m, names[:100], vocab),
                                                                          abs=1e-12)


@pytest.mark.parametrize("kind", ["wavenet", "lstm", "transformer"])
def test_cached_sampling_equals_full_recomputation(kind):
    ensemble = Ensemble(members(kind, 2))
    ids = torch.tensor([[5, 1, 14], [9, 0, 3], [26, 26, 2], [1, 2, 3]])  # (steps, batch): fed in turn
    cached, full = make_stepper(ensemble, 3, "cpu", "cached"), make_stepper(ensemble, 3, "cpu", "full")
    with torch.no_grad():
        for ix in ids:
            torch.testing.assert_close(cached.logits(), full.logits(), rtol=0, atol=1e-12)
            cached.push(ix)
            full.push(ix)
        torch.testing.assert_close(cached.logits(), full.logits(), rtol=0, atol=1e-12)
    draws = [generate(ensemble, 20, generator=torch.Generator().manual_seed(4), method=method)
             for method in ("cached", "full")]
    assert draws[0] == draws[1]


def test_the_window_stepper_of_a_wavenet_ensemble():
    ensemble = Ensemble(members("wavenet", 2))
    window = generate(ensemble, 20, generator=torch.Generator().manual_seed(4), method="window")
    assert window == generate(ensemble, 20, generator=torch.Generator().manual_seed(4), method="cached")


def test_layouts_and_kinds():
    g = torch.Generator().manual_seed(0)
    widths = Ensemble([WaveNet(27, n_residual=8, n_skip=8, generator=g), WaveNet(27, n_residual=8, n_skip=16,
                                                                                generator=g)])
    assert widths.uniform and widths.kind == "wavenet", "one layout: widths may differ"
    mixed = Ensemble([WaveNet(27, generator=g), LSTM(27, generator=g)])
    assert not mixed.uniform and mixed.kind == "mixed" and mixed.kinds == ["wavenet", "lstm"]
    cycles = Ensemble([WaveNet(27, n_cycles=2, generator=g), WaveNet(27, n_cycles=3, generator=g)])
    assert cycles.kind == "mixed", "other dilations: other packed batches"
    with pytest.raises(WavenetError, match="no one batch layout"):
        mixed(torch.zeros(2, 30, dtype=torch.long))
    with pytest.raises(WavenetError, match="with a cache"):
        Ensemble([WaveNet(27, generator=g), HierarchicalMLP(27, generator=g)])
    with pytest.raises(WavenetError, match="one vocabulary"):
        Ensemble([WaveNet(27, generator=g), WaveNet(28, generator=g)])
    with pytest.raises(WavenetError, match="at least one"):
        Ensemble([])
    for method in ("window", "full"):
        with pytest.raises(WavenetError, match="not available"):
            make_stepper(mixed, 2, "cpu", method)


def _by_hand(model, words, vocab):
    """Every target's loss from `pad_names` rows, word after word, position by position: the
    order `target_nll` promises, computed without it."""
    out = []
    with torch.no_grad():
        for w in words:
            X, Y = pad_names([w], vocab, model.block_size)
            logp = torch.log_softmax(model(X)[0], -1)[0]  # (T, V)
            out.append(-logp[torch.arange(len(w) + 1), Y[0, :len(w) + 1]])
    return torch.cat(out)


@pytest.mark.parametrize("kind", ["wavenet", "lstm", "transformer", "mlp"])
def test_target_nll_is_word_by_word_in_position_order(kind, vocab, names):
    [m] = members(kind, 1)
    words = names[1000:1200]  # lengths mixed, so the peers' length-sorted batches reorder them
    if kind == "mlp":
        X, Y = build_windows(words, vocab, m.block_size)  # windows are already in word, position order
        with torch.no_grad():
            want = -torch.log_softmax(m(X)[0], -1)[torch.arange(len(Y)), Y]
    else:
        want = _by_hand(m, words, vocab)
    torch.testing.assert_close(target_nll(m, words, vocab), want, rtol=0, atol=1e-12)


def test_an_ensemble_of_three_kinds(vocab, names):
    """WaveNet + LSTM + Transformer: each target's probability is the mean of the members'
    (each from its own padded rows); the split loss, each word's score and cached sampling
    (against each member's full recomputation, mixed by hand) follow it."""
    words = names[2000:2150]
    ms = [members(kind, 1)[0] for kind in ("wavenet", "lstm", "transformer")]
    ensemble = Ensemble(ms)
    p = torch.stack([torch.exp(-_by_hand(m, words, vocab)) for m in ms]).mean(0)
    want = -torch.log(p)
    torch.testing.assert_close(target_nll(ensemble, words, vocab), want, rtol=0, atol=1e-12)
    assert split_loss(ensemble, words, vocab) == pytest.approx(want.mean().item(), abs=1e-12)
    ends = torch.cumsum(torch.tensor([len(w) + 1 for w in words]), 0)
    per_word = [-x.sum().item() for x in torch.tensor_split(want, ends[:-1])]
    assert [s.log_likelihood for s in score(ensemble, vocab, words)] == pytest.approx(per_word, abs=1e-10)
    cached = make_stepper(ensemble, 3, "cpu", "cached")
    fulls = [make_stepper(m, 3, "cpu", "full") for m in ms]
    with torch.no_grad():
        for ix in torch.tensor([[5, 1, 14], [9, 2, 3], [26, 26, 2], [1, 2, 3]]):
            want = mean_of_distributions([f.logits() for f in fulls])
            torch.testing.assert_close(cached.logits(), want, rtol=0, atol=1e-12)
            cached.push(ix)
            for f in fulls:
                f.push(ix)
    assert len(generate(ensemble, 5, generator=torch.Generator().manual_seed(0))) == 5
    too_long = "a" * (ms[2].n_positions + 3)
    assert "this ensemble reads" in score(ensemble, vocab, [too_long])[0].error


def test_one_layout_two_paths(vocab, names):
    """A one-layout ensemble's batched forward gives the same split loss as the target by
    target path that `split_loss` takes for every ensemble."""
    ensemble = Ensemble(members("wavenet", 2))
    words = names[:400]
    total = count = 0
    with torch.no_grad():
        for X, Y in eval_batches(ensemble, words, vocab):
            nll = batch_nll(ensemble, X, Y, "cpu")
            total, count = total + nll.sum().item(), count + len(nll)
    assert split_loss(ensemble, words, vocab) == pytest.approx(total / count, abs=1e-12)


# --------------------------------------------------------------------------- the command line

FLAGS = ["--model", "wavenet", "--n-residual", "8", "--n-skip", "8", "--n-layers", "2", "--n-cycles", "1",
         "--batch-size", "8", "--eval-interval", "10", "--no-progress"]


def _wavenet(*argv, threads=2, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-m", "wavenet", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def _done(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_train_an_ensemble_eval_sample_score_and_resume(tmp_path, tiny_file, cli, same_run, one_line_error):
    work, plain = tmp_path / "ens", tmp_path / "plain"
    flags = ["-i", tiny_file, *FLAGS, "--max-steps", "20", "--seed", "5"]
    ens = _wavenet("train", "-o", work, *flags, "-n", "3", "--ensemble", "2")
    one = _wavenet("train", "-o", plain, *flags, "-n", "0", threads=1)
    (code, out, err), (code1, _, err1) = _done(ens), _done(one)
    assert code == 0 and code1 == 0, err + err1
    assert json.loads((work / "ensemble.json").read_text())["members"] == ["member-1", "member-2"]
    first, second = (RunDir(work / f"member-{k}").load() for k in (1, 2))
    assert [first["train_config"]["seed"], second["train_config"]["seed"]] == [5, 6]
    same_run(first, RunDir(plain).load())  # member 1 is the plain run of its seed, bit for bit
    assert not torch.equal(first["model"]["head.weight"], second["model"]["head.weight"])
    assert "member-1: step 20  val" in out and "member-2: step 20  val" in out
    assert "ensemble val loss" in out and len(out.strip().splitlines()[-1].split()) == 2, out  # a sample line

    model, vocab = wavenet.load(work)
    assert isinstance(model, Ensemble) and len(model) == 2
    val = split_loss(model, load_split(RunDir(work).load_model()[2]["data"])[1], vocab)
    assert f"ensemble val loss {val:.4f}" in out
    code, out, err = cli("eval", "-o", work, "--splits", "val")
    assert code == 0 and f"val         loss {val:.4f}" in out, out + err
    code, out, err = cli("sample", "-o", work, "-n", "4", "--seed", "1")
    assert code == 0 and len(out.strip().splitlines()) == 4, err
    code, out, err = cli("score", "-o", work, tiny_file)
    assert code == 0 and len(out.strip().splitlines()) == 1 + len(tiny_file.read_text().split()), err

    # continue both members; refuse what does not fit
    code, out, err = _done(_wavenet("train", "-i", tiny_file, "-o", work, "--ensemble", "2", "--resume",
                                    "--max-steps", "30", "-n", "0", "--no-progress"))
    assert code == 0, err
    assert [RunDir(work / f"member-{k}").load()["step"] for k in (1, 2)] == [30, 30]
    assert "member-2: step 30  val" in out and "member-2: step 20" not in out
    for argv, message in [
        (["--ensemble", "2"], "exists: pass --resume"),
        (["--ensemble", "3", "--resume"], "holds 2 members, not 3"),
        (["--ensemble", "0", "-o", tmp_path / "other"], "ensemble must be between 1 and 64"),
        (["--ensemble", "2", "-o", plain], "holds a single run's checkpoint"),
        (["--ensemble", "2", "-o", tmp_path / "new", "--dropout", "2"], "dropout"),
    ]:
        one_line_error(*cli("train", "-i", tiny_file, "-o", work, *FLAGS, *argv)[::2], message)
    assert not (tmp_path / "new").exists() and not (tmp_path / "other").exists(), "nothing written"
    code, _, err = cli("convert", "-o", work)
    assert code != 0 and "holds an ensemble" in err


def _children(pid: int) -> list[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    return [int(c) for c in open(path).read().split()] if os.path.exists(path) else []


def _wait_for_checkpoints(proc, work, n=2, timeout=300):
    deadline = time.monotonic() + timeout
    while not all((work / f"member-{k + 1}" / "checkpoint.pt").exists() for k in range(n)):
        if proc.poll() is not None:
            pytest.fail(f"the ensemble exited with {proc.returncode} early: {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"no checkpoints in {timeout} s"
        time.sleep(0.01)


def test_ctrl_c_stops_every_member_with_its_checkpoint(tmp_path, tiny_file):
    """SIGINT to the parent alone (the members have sessions of their own): it passes it on,
    every member saves and stops, all exit 130, and resuming continues each member."""
    work = tmp_path / "ens"
    argv = ["train", "-i", tiny_file, "-o", work, *FLAGS, "--max-steps", "1000000", "-n", "0",
            "--ensemble", "2"]
    proc = _wavenet(*argv)
    _wait_for_checkpoints(proc, work)
    proc.send_signal(signal.SIGINT)
    code, out, err = _done(proc)
    assert code == 130, err
    assert f"continue with: wavenet train -o {work} --ensemble 2 --resume" in out
    steps = [RunDir(work / f"member-{k}").load()["step"] for k in (1, 2)]
    assert all(s >= 10 for s in steps)
    for k in (1, 2):
        assert "interrupted at step" in (work / f"member-{k}" / "train.log").read_text()
    proc = _wavenet(*argv, "--resume")
    while any(RunDir(work / f"member-{k}").load()["step"] <= s for k, s in zip((1, 2), steps)):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code, _, err = _done(proc)
    assert code == 130, err


@pytest.mark.slow
def test_a_member_that_dies_stops_the_other_with_one_line(tmp_path, tiny_file):
    work = tmp_path / "ens"
    proc = _wavenet("train", "-i", tiny_file, "-o", work, *FLAGS, "--max-steps", "1000000", "-n", "0",
                    "--ensemble", "2")
    _wait_for_checkpoints(proc, work)
    victim = max(_children(proc.pid))  # the second member started
    os.kill(victim, signal.SIGKILL)
    code, _, err = _done(proc)
    assert code == 1 and "failed (exit -9)" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert all(RunDir(work / f"member-{k}").load()["step"] >= 10 for k in (1, 2))


@pytest.mark.slow
def test_members_whose_parent_is_killed_save_and_stop(tmp_path, tiny_file):
    """SIGKILL the parent: each member gets SIGTERM from the kernel (PR_SET_PDEATHSIG), saves
    and exits rather than train on unwatched."""
    work = tmp_path / "ens"
    proc = _wavenet("train", "-i", tiny_file, "-o", work, *FLAGS, "--max-steps", "1000000", "-n", "0",
                    "--ensemble", "2")
    _wait_for_checkpoints(proc, work)
    members = _children(proc.pid)
    assert len(members) == 2
    proc.kill()
    proc.communicate()
    deadline = time.monotonic() + 120
    while any(os.path.exists(f"/proc/{pid}") and "zombie" not in open(f"/proc/{pid}/status").read()
              for pid in members):
        assert time.monotonic() < deadline, "a member trains on after its parent died"
        time.sleep(0.05)
    for k in (1, 2):
        assert "interrupted at step" in (work / f"member-{k}" / "train.log").read_text()
        assert RunDir(work / f"member-{k}").load()["step"] >= 10


def test_wavenet_ensemble_joins_runs_of_any_kinds(tmp_path, tiny_file, cli, one_line_error):
    runs = {}
    short = ["--max-steps", "10", "--eval-interval", "10", "--batch-size", "8", "--no-progress", "-n", "0"]
    for kind, flags in [("wavenet", ["--n-residual", "8", "--n-skip", "8", "--n-cycles", "1"]),
                        ("lstm", ["--n-embd", "8", "--n-hidden", "8"]),
                        ("mlp", ["--n-embd", "4", "--n-hidden", "8"])]:
        runs[kind] = tmp_path / kind
        code, _, err = cli("train", "-i", tiny_file, "-o", runs[kind], "--model", kind, *flags, *short)
        assert code == 0, err
    work = tmp_path / "deeper" / "joined"
    code, out, err = cli("ensemble", "-o", work, runs["wavenet"], runs["lstm"])
    assert code == 0, err
    assert json.loads((work / "ensemble.json").read_text())["members"] == ["../../wavenet", "../../lstm"]
    model, vocab = wavenet.load(work)
    assert model.kinds == ["wavenet", "lstm"]
    val = split_loss(model, load_split(RunDir(runs["lstm"]).load()["data"])[1], vocab)
    assert f"ensemble val loss {val:.4f}" in out and "(wavenet, lstm)" in out
    code, out, err = cli("eval", "-o", work, "--splits", "val")
    assert code == 0 and f"val         loss {val:.4f}" in out, err
    code, out, err = cli("sample", "-o", work, "-n", "3", "--seed", "0")
    assert code == 0 and len(out.strip().splitlines()) == 3, err
    assert cli("score", "-o", work, tiny_file)[0] == 0

    other = tmp_path / "other.txt"
    other.write_text(tiny_file.read_text() + "zed\n")
    code, _, err = cli("train", "-i", other, "-o", tmp_path / "elsewhere", "--model", "lstm", "--n-embd", "8",
                       "--n-hidden", "8", *short)
    assert code == 0, err
    for argv, message in [
        ([tmp_path / "new", runs["wavenet"], tmp_path / "elsewhere"], "trained on another data file"),
        ([tmp_path / "new", runs["wavenet"], runs["mlp"]], "needs members that sample with a cache"),
        ([tmp_path / "new", runs["wavenet"], runs["wavenet"]], "a run is named twice"),
        ([tmp_path / "new", runs["wavenet"], tmp_path / "nothing"], "no checkpoint there"),
        ([tmp_path / "new", work], "is an ensemble itself"),
        ([work, runs["wavenet"]], "holds a run already"),
        ([runs["lstm"], runs["wavenet"]], "holds a run already"),
    ]:
        one_line_error(*cli("ensemble", "-o", *argv)[::2], message)
    assert not (tmp_path / "new").exists(), "nothing written for a refused ensemble"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "ensemble.json").write_text("{not json")
    one_line_error(*cli("eval", "-o", tmp_path / "broken")[::2], "ensemble.json: unreadable")
