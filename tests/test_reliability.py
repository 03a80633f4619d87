"""Bad input, faults and resume: nothing the user has is lost, nothing half-done is written."""

import fcntl
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import wavenet.checkpoint as ckpt_io
from wavenet.checkpoint import load_checkpoint
from wavenet.cli import main

from conftest import NAMES

TINY = ["--max-steps", "40", "--eval-interval", "10", "--batch-size", "8", "--n-embd", "4", "--n-hidden", "8",
        "--no-progress", "-n", "0"]


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, message):
    assert code == 2, err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("content, message", [
    (b"", "no items"),
    (b" \n\t\n  \r\n", "no items"),
    (b"anna\nbob\ncar\x00l\n", "line 3: contains a NUL byte"),
    (b"anna\n\xc3\x28bob\n", "line 2: not valid UTF-8"),
    (b"anna\n" + b"y" * 2000 + b"\n", "line 2: longer than --max-length 1000"),
    (b"anna\nbob\ncarl\n", "too few to split"),
])
def test_bad_input_files(tmp_path, capsys, content, message):
    path = tmp_path / "in.txt"
    path.write_bytes(content)
    work = tmp_path / "run"
    one_line_error(*run(capsys, "train", "-i", path, "-o", work, *TINY)[::2], message)
    assert not work.exists(), "a failed start must not leave a half-made run directory"


def test_crlf_and_bom_are_accepted(tmp_path, tiny_file, capsys):
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"\xef\xbb\xbf" + tiny_file.read_bytes().replace(b"\n", b"\r\n"))
    code, _, err = run(capsys, "train", "-i", path, "-o", tmp_path / "run", *TINY)
    assert code == 0, err
    vocab = load_checkpoint(tmp_path / "run")["vocab"]["chars"]
    assert "\r" not in vocab and "\ufeff" not in vocab
    assert vocab == load_checkpoint(_train(tmp_path / "plain", tiny_file, capsys))["vocab"]["chars"]


def _train(work, tiny_file, capsys, *extra):
    code, _, err = run(capsys, "train", "-i", tiny_file, "-o", work, *TINY, *extra)
    assert code == 0, err
    return work


def test_work_dir_mistakes(tmp_path, tiny_file, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    one_line_error(*run(capsys, "train", "-i", tiny_file, "-o", a_file, *TINY)[::2], "is not a directory")
    assert a_file.read_text() == "x"
    work = _train(tmp_path / "run", tiny_file, capsys)
    one_line_error(*run(capsys, "train", "-o", work, "--resume", "--n-hidden", "16")[::2],
                   "--n-hidden 16 contradicts the checkpoint (8)")
    one_line_error(*run(capsys, "train", "-o", work, "--resume", "--model", "mlp")[::2],
                   "--model mlp contradicts the checkpoint (conv)")
    other = tmp_path / "other.txt"
    other.write_text(tiny_file.read_text().upper())
    one_line_error(*run(capsys, "train", "-o", work, "--resume", "-i", other)[::2], "SHA-256 differs")
    one_line_error(*run(capsys, "sample", "-o", tmp_path / "nowhere")[::2], "no checkpoint")


def test_second_run_into_the_same_work_dir_refuses(tmp_path, tiny_file, capsys):
    work = tmp_path / "run"
    work.mkdir()
    with open(work / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a first run, still training
        one_line_error(*run(capsys, "train", "-i", tiny_file, "-o", work, *TINY)[::2], "another wavenet process")
    assert not (work / "checkpoint.pt").exists()


def test_corrupt_and_untrusted_checkpoints_via_the_cli(tmp_path, tiny_file, capsys):
    work = _train(tmp_path / "run", tiny_file, capsys)
    path = work / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    for command in ("sample", "eval"):
        one_line_error(*run(capsys, command, "-o", work)[::2], "corrupt or truncated")
    one_line_error(*run(capsys, "train", "-o", work, "--resume")[::2], "corrupt or truncated")

    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "wavenet-checkpoint", "version": 1, "x": Evil()}, path, pickle_module=pickle)
    one_line_error(*run(capsys, "sample", "-o", work)[::2], "refused")
    assert not marker.exists()


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, tiny_file, capsys, monkeypatch):
    real_save, calls = torch.save, []

    def flaky(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", flaky)
    work = tmp_path / "run"
    code, _, err = run(capsys, "train", "-i", tiny_file, "-o", work, *TINY)
    one_line_error(code, err, "No space left on device")
    assert "the previous checkpoint is intact" in err
    assert load_checkpoint(work)["step"] == 10
    assert sorted(p.name for p in work.iterdir()) == [".lock", "checkpoint.pt", "metrics.jsonl"]


def test_divergence_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_file, capsys):
    work = tmp_path / "run"
    code, _, err = run(capsys, "train", "--model", "mlp", "-i", NAMES, "-o", work, "--learning-rate", "1e6",
                       "--max-steps", "50", "--eval-interval", "1", "--no-progress")
    one_line_error(code, err, "try a lower --learning-rate")
    assert "step" in err and "last good checkpoint" in err
    ckpt = load_checkpoint(work)
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_resume_is_bit_identical(tmp_path, tiny_file, capsys, monkeypatch, model):
    """40 steps straight == 20 steps, then --resume for 20: parameters, buffers, optimizer
    state, batch state and loss history all bit-identical."""
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    real_save = ckpt_io.save_checkpoint

    def keep_step_20(path, state):
        real_save(path, state)
        if state["step"] == 20:
            shutil.copy(path, resumed / "checkpoint.pt")
            shutil.copy(path.parent / "metrics.jsonl", resumed / "metrics.jsonl")

    monkeypatch.setattr(ckpt_io, "save_checkpoint", keep_step_20)
    straight = _train(tmp_path / "straight", tiny_file, capsys, "--model", model, "--learning-rate", "0.3")
    monkeypatch.setattr(ckpt_io, "save_checkpoint", real_save)
    code, out, err = run(capsys, "train", "-o", resumed, "--resume")
    assert code == 0, err
    assert "resuming" in out
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert a["step"] == b["step"] == 40
    for key in ("model", "batches"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]) if torch.is_tensor(a[key][name]) \
                else a[key][name] == b[key][name], name
    assert torch.equal(a["lossi"], b["lossi"]) and len(a["lossi"]) == 40
    assert a["optimizer"] == b["optimizer"]
    assert (straight / "metrics.jsonl").read_text() == (resumed / "metrics.jsonl").read_text()


def _spawn(tiny_file, work, *extra):
    cmd = [sys.executable, "-m", "wavenet", "train", "-i", str(tiny_file), "-o", str(work), "--max-steps", "1000000",
           "--eval-interval", "5", "--batch-size", "8", "--n-embd", "4", "--n-hidden", "8", "--no-progress", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, timeout=60):
    t0 = time.time()
    while not path.exists():
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


def test_ctrl_c_saves_and_exits_130(tmp_path, tiny_file):
    work = tmp_path / "run"
    proc = _spawn(tiny_file, work)
    _wait_for(work / "checkpoint.pt")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    step = load_checkpoint(work)["step"]
    assert f"interrupted at step {step:,}" in out and str(work / "checkpoint.pt") in out
    before = (work / "checkpoint.pt").stat().st_mtime_ns
    proc = _spawn(tiny_file, work, "--resume")
    t0 = time.time()
    while (work / "checkpoint.pt").stat().st_mtime_ns == before:  # the resumed loop has saved
        assert time.time() - t0 < 60
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and f"resuming {work} at step {step:,}" in out, err
    assert load_checkpoint(work)["step"] > step


def _sigkill_rounds(tmp_path, tiny_file, rounds, seed):
    rng = random.Random(seed)
    work = tmp_path / "run"
    last = 0
    for i in range(rounds):
        proc = _spawn(tiny_file, work, *(["--resume"] if (work / "checkpoint.pt").exists() else []))
        time.sleep(rng.uniform(1.5, 4.0))  # torch import takes ~1.5 s; then checkpoints every 5 steps
        proc.kill()
        proc.communicate()
        if (work / "checkpoint.pt").exists():
            step = load_checkpoint(work)["step"]  # always a whole, loadable checkpoint
            assert step >= last
            last = step
    assert last > 0
    return work


def test_sigkill_never_leaves_a_broken_checkpoint(tmp_path, tiny_file):
    _sigkill_rounds(tmp_path, tiny_file, rounds=3, seed=0)


@pytest.mark.slow
def test_sigkill_many_times(tmp_path, tiny_file):
    _sigkill_rounds(tmp_path, tiny_file, rounds=25, seed=1)


def test_data_file_changed_since_training(tmp_path, capsys):
    path = tmp_path / "names.txt"
    path.write_text("\n".join(f"{a}{b}" for a in "abcdefg" for b in "hijklm") + "\n")
    work = tmp_path / "run"
    assert run(capsys, "train", "-i", path, "-o", work, *TINY)[0] == 0
    path.write_text(path.read_text() + "zed\n")
    one_line_error(*run(capsys, "eval", "-o", work)[::2], "changed since training (SHA-256 differs)")
    code, out, err = run(capsys, "sample", "-o", work, "-n", "3", "--seed", "0")
    assert code == 0 and "samples not marked" in out and len(out.splitlines()) == 4, err
