"""Training across processes (torchrun, gloo on CPU): N processes compute what one does,
rank 0 alone writes, and a signal or a dead rank never leaves a hang or a broken run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from wavenet.batches import NameBatches, WindowBatches, build_windows, make_batches
from wavenet.config import RECIPES, TrainConfig
from wavenet.distributed import Group, moments, share
from wavenet.models import ConvWaveNet
from wavenet.rundir import RunDir

TOL = 1e-5  # float32, after 30 steps: the bound


@pytest.fixture
def data_file(tmp_path, names):
    """4,000 of the lecture's names: 3,200 train, 400 val, 400 test (quick to load)."""
    path = tmp_path / "names4k.txt"
    path.write_text("\n".join(names[:4000]) + "\n", encoding="utf-8")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def group_of():
    """`group_of(argv_of_rank)`: start one `python -m wavenet ...` per rank, wired as torchrun
    wires them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); `argv_of_rank(r)` gives
    rank r's arguments. Returns the processes; any still running at the end are killed."""
    procs = []

    def start(argv_of_rank, world=2):
        port = _free_port()
        started = []
        for r in range(world):
            env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r),
                       WORLD_SIZE=str(world), LOCAL_RANK=str(r), OMP_NUM_THREADS="1",
                       PYTHONFAULTHANDLER="1")  # an abort shows where
            cmd = [sys.executable, "-m", "wavenet", *map(str, argv_of_rank(r))]
            started.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True))
        procs.extend(started)
        return started

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()


def _finish(procs, timeout=300):
    """(exit code, stdout, stderr) of each process, once all have exited."""
    outputs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, *out) for p, out in zip(procs, outputs)]


def _wait_for(path, procs, timeout=300):
    """Wait for a state, not a time: until `path` exists and is not empty (a process dying
    first fails at once, with its stderr)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size > 0):
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"a rank exited with {p.returncode} first: {p.communicate()[1]}")
        assert time.monotonic() < deadline, f"{path} not written in {timeout} s"
        time.sleep(0.01)


def _close(a: dict, b: dict, tol=TOL):
    """Every parameter and buffer (BatchNorm's running statistics included) within tol."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=tol), \
            (k, (a[k].double() - b[k].double()).abs().max().item())


# ------------------------------------------------------------------ in one process


@pytest.mark.parametrize("n", [0, 1, 2, 5, 31, 64])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shares_are_contiguous_disjoint_and_cover_the_batch(n, world):
    parts = [share(n, Group(r, world, r)) for r in range(world)]
    assert parts[0].start == 0 and parts[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
    sizes = [p.stop - p.start for p in parts]
    assert max(sizes) - min(sizes) <= 1 and share(n, None) == slice(0, n)


def test_every_rank_takes_its_share_of_the_same_batch(names, vocab):
    words = names[:500]
    X, Y = build_windows(words, vocab, 8)
    single = WindowBatches(X, Y, 32, torch.Generator().manual_seed(3))
    ranks = [WindowBatches(X, Y, 32, torch.Generator().manual_seed(3), group=Group(r, 3, r))
             for r in range(3)]
    for _ in range(4):
        Xs, Ys = single.next()
        parts = [b.next() for b in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), Xs)
        assert torch.equal(torch.cat([p[1] for p in parts]), Ys)
        assert [b.counts for b in ranks] == [(10, 32), (11, 32), (11, 32)]

    def rows(batch):  # the names a padded batch holds, in order
        X, _ = batch
        return [vocab.decode(r[8:].tolist()).rstrip(".") for r in X]

    single = NameBatches(words, vocab, 8, 10, seed=1, packed=False)
    ranks = [NameBatches(words, vocab, 8, 10, seed=1, packed=False, group=Group(r, 2, r)) for r in range(2)]
    for _ in range(60):  # across an epoch boundary (50 batches an epoch)
        whole = rows(single.next())
        parts = [rows(b.next()) for b in ranks]
        assert parts[0] + parts[1] == whole and len(parts[0]) == 5
        n_local = [b.counts[0] for b in ranks]
        assert sum(n_local) == ranks[0].counts[1] == sum(len(w) + 1 for w in whole)


def test_a_batch_smaller_than_the_group_is_refused(names, vocab):
    model = ConvWaveNet(len(vocab))
    with pytest.raises(Exception, match="batch_size 2 is smaller than the 3 processes"):
        make_batches(model, names[:100], vocab, TrainConfig(batch_size=2), torch.Generator(),
                     group=Group(0, 3, 0))


def test_moments_without_a_group_are_the_batch_statistics():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(300, 7, generator=g, dtype=torch.float64) * 3 + 5
    var, mean = torch.var_mean(rows, 0, correction=1)
    m, v = moments(rows)
    assert torch.allclose(m, mean, rtol=0, atol=1e-12) and torch.allclose(v, var, rtol=0, atol=1e-12)
    w = torch.randint(0, 4, (300,), generator=g)  # weighted rows = rows repeated
    var, mean = torch.var_mean(rows.repeat_interleave(w, 0), 0, correction=1)
    m, v = moments(rows, w.double())
    assert torch.allclose(m, mean, rtol=0, atol=1e-12) and torch.allclose(v, var, rtol=0, atol=1e-12)


@pytest.mark.parametrize("env, message", [
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK 2 is outside WORLD_SIZE 2"),
    ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "must be integers"),
])
def test_a_broken_torchrun_environment_is_one_line(monkeypatch, env, message, tiny_file, tmp_path, cli,
                                                   one_line_error, tiny_flags):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code, _, err = cli("train", "-i", tiny_file, "-o", tmp_path / "run", *tiny_flags)
    one_line_error(code, err, message)


def test_dist_timeout_must_be_positive(tiny_file, tmp_path, cli, one_line_error, tiny_flags):
    code, _, err = cli("train", "-i", tiny_file, "-o", tmp_path / "run", *tiny_flags, "--dist-timeout", "0")
    one_line_error(code, err, "--dist-timeout must be a positive number")


# ------------------------------------------------------------------ two processes


@pytest.mark.parametrize("kind, flags", [
    ("conv", []),
    pytest.param("mlp", [], marks=pytest.mark.slow),  # slow, with the lstm: conv and wavenet run by default
    ("wavenet", ["--dropout", "0", "--n-residual", "32", "--n-skip", "48", "--ema", "0.9"]),
    pytest.param("lstm", ["--dropout", "0", "--n-embd", "16", "--n-hidden", "24"], marks=pytest.mark.slow),
    pytest.param("transformer", ["--dropout", "0", "--n-embd", "16", "--n-head", "2", "--n-layers", "2"],
                 marks=pytest.mark.slow),
])
def test_two_processes_train_what_one_does(kind, flags, data_file, tmp_path, cli, group_of):
    """30 steps, val every 10: parameters, BatchNorm buffers, the weight average (the
    WaveNet's, --ema), every step's loss and the val losses equal one process's; only rank
    0 prints and writes."""
    argv = ["train", "-i", data_file, "--model", kind, "--max-steps", "30", "--eval-interval", "10",
            "--no-progress", "-n", "3", *flags]
    code, out_one, err = cli(*argv, "-o", tmp_path / "one")
    assert code == 0, err
    (c0, out0, err0), (c1, out1, err1) = _finish(group_of(lambda r: [*argv, "-o", tmp_path / "two"]))
    assert c0 == 0 and c1 == 0, err0 + err1
    one, two = RunDir(tmp_path / "one").load(), RunDir(tmp_path / "two").load()
    _close(one["model"], two["model"])
    _close(one["best"]["model"], two["best"]["model"])
    assert ("ema" in one) == ("ema" in two) == (kind == "wavenet")
    if kind == "wavenet":
        _close(one["ema"], two["ema"])
    assert torch.allclose(one["lossi"], two["lossi"], rtol=0, atol=TOL) and len(two["lossi"]) == 30
    metrics = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
               for d in ("one", "two")]
    assert [m["step"] for m in metrics[1]] == [10, 20, 30]  # written once, by rank 0
    for a, b in zip(*metrics):
        assert abs(a["val_loss"] - b["val_loss"]) < TOL
        assert abs(a["train_loss_recent"] - b["train_loss_recent"]) < TOL
    assert "2 processes" in out0 and out1 == "" and "Traceback" not in err1
    losses = [[float(line.split()[-1]) for line in out.splitlines()
               if line.startswith(("train loss", "val loss"))] for out in (out_one, out0)]
    assert len(losses[1]) == 2 and all(abs(a - b) < TOL for a, b in zip(*losses))
    assert len(two["rank_rngs"]) == 2 and "rank_rngs" not in one


def test_torchrun_itself_and_resume_from_a_one_process_checkpoint(data_file, tmp_path, cli,
                                                                   copy_checkpoint_at):
    """The real launcher: a conv run stopped at step 20 (by one process) resumes under
    `torchrun --standalone --nproc_per_node 2` and ends where one uninterrupted process does."""
    argv = ["train", "-i", data_file, "--max-steps", "40", "--eval-interval", "10", "--no-progress",
            "-n", "0"]
    with copy_checkpoint_at(20, tmp_path / "resumed"):
        code, _, err = cli(*argv, "-o", tmp_path / "straight")
    assert code == 0, err
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*torchrun, "-m", "wavenet", *map(str, argv), "-o", tmp_path / "resumed",
                           "--resume"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stdout and "at step 20" in proc.stdout and "2 processes" in proc.stdout
    straight, resumed = RunDir(tmp_path / "straight").load(), RunDir(tmp_path / "resumed").load()
    _close(straight["model"], resumed["model"])
    assert resumed["step"] == 40 and torch.allclose(straight["lossi"], resumed["lossi"], rtol=0, atol=TOL)


@pytest.mark.slow
def test_a_time_budget_under_torchrun_fits_one_step_count_for_every_rank(data_file, tmp_path, cli,
                                                                         group_of, monkeypatch):
    """Both ranks measure the same steps and take rank 0's rate, at the start and at each
    re-fit, so they train the same count on the same schedule (any disagreement would hang
    the group or fail); the run then equals one process trained on that recorded schedule."""
    argv = ["train", "-i", data_file, "--model", "wavenet", "--dropout", "0", "--n-residual", "16",
            "--n-skip", "16", "--no-progress", "-n", "0"]
    (c0, out0, err0), (c1, _, err1) = _finish(group_of(lambda r: [*argv, "--time-budget", "0.05",
                                                                  "-o", tmp_path / "two"]))
    assert c0 == 0 and c1 == 0, err0 + err1
    two = RunDir(tmp_path / "two").load()
    steps = two["train_config"]["max_steps"]
    assert two["step"] == steps > 0 and "time budget 0.05 min" in out0
    # the recorded recipe (steps, interval, any knots: no flag sets those) as the default, no budget
    monkeypatch.setitem(RECIPES, "wavenet", replace(TrainConfig(**two["train_config"]), time_budget=0.0))
    code, _, err = cli(*argv, "-o", tmp_path / "one")
    assert code == 0, err
    _close(RunDir(tmp_path / "one").load()["model"], two["model"])


# SIGINT's case is slow (the default suite sends one process SIGINT in test_reliability.py)
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM])
def test_a_signal_to_the_group_saves_one_checkpoint_and_every_rank_exits_130(sig, data_file, tmp_path,
                                                                              group_of):
    """Ctrl-C (SIGINT to every process, as a terminal sends it) or SIGTERM: all ranks stop at
    the same step, rank 0 writes that step's checkpoint, all exit 130; two ranks resume it
    (each with its own dropout stream: a gated WaveNet with dropout) and stop again later."""
    work, metrics = tmp_path / "run", tmp_path / "run" / "metrics.jsonl"
    argv = ["train", "-i", data_file, "-o", work, "--model", "wavenet", "--n-residual", "16",
            "--n-skip", "16", "--max-steps", "1000000", "--eval-interval", "5", "--no-progress"]
    step = 0
    for resume in ([], ["--resume"]):
        procs = group_of(lambda r: [*argv, *resume])  # noqa: B023 (called at once)
        _wait_for(metrics, procs)
        while len(metrics.read_text().splitlines()) <= step // 5:  # the resumed run's first val
            assert all(p.poll() is None for p in procs)
            time.sleep(0.01)
        for p in procs:
            p.send_signal(sig)
        (c0, out0, err0), (c1, out1, err1) = _finish(procs)
        assert c0 == 130 and c1 == 130, err0 + err1
        ckpt = RunDir(work).load()
        if resume:
            assert f"resuming {work} at step {step:,}" in out0
        assert ckpt["step"] > step and f"interrupted at step {ckpt['step']:,}" in out0 and out1 == ""
        step = ckpt["step"]
        rngs = ckpt["rank_rngs"]
        assert len(rngs) == 2 and not torch.equal(rngs[0]["cpu"], rngs[1]["cpu"])
        assert not list(work.glob("*.tmp"))


@pytest.mark.parametrize("victim", [0, pytest.param(1, marks=pytest.mark.slow)])  # 0: the rank that writes
def test_a_killed_rank_stops_the_others_with_one_line(victim, data_file, tmp_path, group_of):
    """SIGKILL one rank mid-run: the other exits 1 with one line (no hang, no traceback), and
    the last checkpoint still loads."""
    work = tmp_path / "run"
    procs = group_of(lambda r: ["train", "-i", data_file, "-o", work, "--max-steps", "1000000",
                                "--eval-interval", "20", "--no-progress", "--dist-timeout", "60"])
    _wait_for(work / "checkpoint.pt", procs)  # written whole (os.replace), at step 20
    procs[victim].kill()
    survivor = procs[1 - victim]
    _, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"rank {1 - victim} of 2: the process group failed" in err and "is kept (" in err
    assert RunDir(work).load()["step"] >= 20
    model, _, _ = RunDir(work).load_model()
    assert model.kind == "conv"


def test_a_rank_that_cannot_start_stops_the_group(data_file, tmp_path, group_of):
    """Rank 1's input file is missing: it names the file, rank 0 says another rank failed;
    both one line, exit 2, and nothing is trained."""
    results = _finish(group_of(lambda r: ["train", "-i", data_file if r == 0 else tmp_path / "missing.txt",
                                          "-o", tmp_path / "run", "--no-progress"]))
    for code, _, err in results:
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "missing.txt: no such file" in results[1][2]
    assert "another process of the group could not start" in results[0][2]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_ranks_reading_different_files_are_refused(data_file, tmp_path, group_of):
    """Rank 1 reads another file (valid on its own): every rank says so, exit 2, nothing trained."""
    other = tmp_path / "other.txt"
    other.write_text(data_file.read_text(encoding="utf-8").replace("a", "e"), encoding="utf-8")
    results = _finish(group_of(lambda r: ["train", "-i", data_file if r == 0 else other,
                                          "-o", tmp_path / "run", "--no-progress"]))
    for code, _, err in results:
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert "-i/--input-file: the processes of the group read different files" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
