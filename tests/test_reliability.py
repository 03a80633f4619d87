"""Bad input, faults and resume: nothing the user has is lost, nothing half-done is written."""

import fcntl
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from wavenet.rundir import RunDir


def load(work):
    return RunDir(work).load()


@pytest.mark.parametrize("content, message", [
    (b"", "no items"),
    (b" \n\t\n  \r\n", "no items"),
    (b"anna\nbob\ncar\x00l\n", "line 3: contains a NUL byte"),
    (b"anna\n\xc3\x28bob\n", "line 2: not valid UTF-8"),
    (b"anna\n" + b"y" * 2000 + b"\n", "line 2: longer than --max-length 1000"),
    (b"anna\nbob\ncarl\n", "too few to split"),
])
def test_bad_input_files(tmp_path, content, message, cli, one_line_error, tiny_flags):
    path = tmp_path / "in.txt"
    path.write_bytes(content)
    work = tmp_path / "run"
    one_line_error(*cli("train", "-i", path, "-o", work, *tiny_flags)[::2], message)
    assert not work.exists(), "a failed start must not leave a half-made run directory"


def test_crlf_and_bom_are_accepted(tmp_path, tiny_file, cli, tiny_flags, train_tiny):
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"\xef\xbb\xbf" + tiny_file.read_bytes().replace(b"\n", b"\r\n"))
    code, _, err = cli("train", "-i", path, "-o", tmp_path / "run", *tiny_flags)
    assert code == 0, err
    vocab = load(tmp_path / "run")["vocab"]["chars"]
    assert "\r" not in vocab and "\ufeff" not in vocab
    assert vocab == load(train_tiny(tmp_path / "plain"))["vocab"]["chars"]


@pytest.fixture
def train_tiny(cli, tiny_flags, tiny_file):
    """train_tiny(work, *flags): a tiny run on tiny_file into `work`, which must succeed."""
    def train(work, *extra):
        code, _, err = cli("train", "-i", tiny_file, "-o", work, *tiny_flags, *extra)
        assert code == 0, err
        return work
    return train


def test_work_dir_mistakes(tmp_path, tiny_file, cli, one_line_error, tiny_flags, train_tiny):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    one_line_error(*cli("train", "-i", tiny_file, "-o", a_file, *tiny_flags)[::2], "is not a directory")
    assert a_file.read_text() == "x"
    work = train_tiny(tmp_path / "run")
    one_line_error(*cli("train", "-o", work, "--resume", "--n-hidden", "16")[::2],
                   "--n-hidden 16 contradicts the checkpoint (8)")
    one_line_error(*cli("train", "-o", work, "--resume", "--model", "mlp")[::2],
                   "--model mlp contradicts the checkpoint (conv)")
    other = tmp_path / "other.txt"
    other.write_text(tiny_file.read_text().upper())
    one_line_error(*cli("train", "-o", work, "--resume", "-i", other)[::2], "SHA-256 differs")
    one_line_error(*cli("sample", "-o", tmp_path / "nowhere")[::2], "no checkpoint")


def test_second_run_into_the_same_work_dir_refuses(tmp_path, tiny_file, cli, one_line_error, tiny_flags):
    work = tmp_path / "run"
    work.mkdir()
    with open(work / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a first run, still training
        code, _, err = cli("train", "-i", tiny_file, "-o", work, *tiny_flags)
        one_line_error(code, err, "another wavenet process")
    assert not (work / "checkpoint.pt").exists()


def test_corrupt_and_untrusted_checkpoints_via_the_cli(tmp_path, tiny_file, cli, one_line_error, train_tiny):
    work = train_tiny(tmp_path / "run")
    path = work / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    for command in ("sample", "eval"):
        one_line_error(*cli(command, "-o", work)[::2], "corrupt or truncated")
    one_line_error(*cli("train", "-o", work, "--resume")[::2], "corrupt or truncated")

    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "wavenet-checkpoint", "version": 1, "x": Evil()}, path, pickle_module=pickle)
    one_line_error(*cli("sample", "-o", work)[::2], "refused")
    assert not marker.exists()


def test_divergence_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, names_path, cli,
                                                                      one_line_error):
    work = tmp_path / "run"
    code, _, err = cli("train", "--model", "mlp", "-i", names_path, "-o", work, "--learning-rate", "1e6",
                       "--max-steps", "50", "--eval-interval", "1", "--no-progress")
    one_line_error(code, err, "try a lower --learning-rate")
    assert "the last good checkpoint of step" in err
    ckpt = load(work)
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_resume_is_bit_identical(tmp_path, model, cli, train_tiny, copy_checkpoint_at, scores_of):
    """40 steps straight == 20 steps, then --resume for 20: parameters, buffers, optimizer
    state, batch state and loss history all bit-identical."""
    resumed = tmp_path / "resumed"
    with copy_checkpoint_at(20, resumed):
        straight = train_tiny(tmp_path / "straight", "--model", model, "--learning-rate", "0.3")
    code, out, err = cli("train", "-o", resumed, "--resume")
    assert code == 0, err
    assert "resuming" in out
    a, b = load(straight), load(resumed)
    assert a["step"] == b["step"] == 40
    for key in ("model", "batches"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]) if torch.is_tensor(a[key][name]) \
                else a[key][name] == b[key][name], name
    assert torch.equal(a["lossi"], b["lossi"]) and len(a["lossi"]) == 40
    assert a["optimizer"] == b["optimizer"]
    assert scores_of(straight) == scores_of(resumed) and len(scores_of(straight)) == 4


def _spawn(tiny_file, work, *extra):
    cmd = [sys.executable, "-m", "wavenet", "train", "-i", str(tiny_file), "-o", str(work),
           "--max-steps", "1000000", "--eval-interval", "5", "--batch-size", "8", "--n-embd", "4",
           "--n-hidden", "8", "--no-progress", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _signature(path):
    """Changes whenever a checkpoint is written (os.replace puts a new file in place)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _wait_for_a_save(proc, path, before, timeout=300):
    """Wait for a state, not a time: until `proc` has written a checkpoint (the file's
    signature differs from `before`). A slow or busy machine only makes this take longer;
    the process dying first fails at once, with its stderr."""
    deadline = time.monotonic() + timeout
    while _signature(path) == before:
        if proc.poll() is not None:
            pytest.fail(f"training exited with {proc.returncode} before saving: {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"no checkpoint written in {timeout} s"
        time.sleep(0.01)


# SIGTERM's case is slow (the default suite's torchrun test sends SIGTERM to a group)
@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_ctrl_c_or_sigterm_saves_and_exits_130(sig, tmp_path, tiny_file):
    rng = random.Random(0)
    work = tmp_path / "run"
    path = work / "checkpoint.pt"
    proc = _spawn(tiny_file, work)
    _wait_for_a_save(proc, path, None)  # training is under way, its Ctrl-C handler installed
    time.sleep(rng.uniform(0, 0.3))
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    step = load(work)["step"]
    assert f"interrupted at step {step:,}" in out and str(path) in out
    before = _signature(path)
    proc = _spawn(tiny_file, work, "--resume")
    _wait_for_a_save(proc, path, before)  # the resumed loop has saved
    time.sleep(rng.uniform(0, 0.3))
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and f"resuming {work} at step {step:,}" in out, err
    assert load(work)["step"] > step


def _sigkill_rounds(tmp_path, tiny_file, rounds, seed):
    """Each round starts (or resumes) training, waits until that process has written a
    checkpoint, then kills it at a random point up to 0.3 s later: mid-step, mid-write or
    between the two. The checkpoint must always load and move forward."""
    rng = random.Random(seed)
    work = tmp_path / "run"
    path = work / "checkpoint.pt"
    last = 0
    for _ in range(rounds):
        before = _signature(path)
        proc = _spawn(tiny_file, work, *(["--resume"] if before is not None else []))
        _wait_for_a_save(proc, path, before)
        time.sleep(rng.uniform(0, 0.3))
        proc.kill()
        proc.communicate()
        step = load(work)["step"]  # always a whole, loadable checkpoint
        assert step > last, "each round saved at least once after resuming"
        last = step
    before = _signature(path)  # one more, ended by Ctrl-C: it clears what the kills left
    proc = _spawn(tiny_file, work, "--resume")
    _wait_for_a_save(proc, path, before)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert not list(work.glob("*.tmp")), "a temporary file left by a killed write is removed by the next run"


def test_sigkill_never_leaves_a_broken_checkpoint(tmp_path, tiny_file):
    _sigkill_rounds(tmp_path, tiny_file, rounds=3, seed=0)


@pytest.mark.slow
def test_sigkill_many_times(tmp_path, tiny_file):
    _sigkill_rounds(tmp_path, tiny_file, rounds=25, seed=1)


def test_data_file_changed_since_training(tmp_path, cli, one_line_error, tiny_flags):
    path = tmp_path / "names.txt"
    path.write_text("\n".join(f"{a}{b}" for a in "abcdefg" for b in "hijklm") + "\n")
    work = tmp_path / "run"
    assert cli("train", "-i", path, "-o", work, *tiny_flags)[0] == 0
    path.write_text(path.read_text() + "zed\n")
    one_line_error(*cli("eval", "-o", work)[::2], "changed since training (SHA-256 differs)")
    code, out, err = cli("sample", "-o", work, "-n", "3", "--seed", "0")
    assert code == 0 and "samples not marked" in out and len(out.splitlines()) == 4, err
