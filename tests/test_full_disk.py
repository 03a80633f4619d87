"""A write that fails (a full disk) is one line naming the file, the cause and the checkpoint
kept, exit 1, for every file a run writes; nothing is left half-written.

Three ways to fill the disk: every write to one file of the run fails with ENOSPC (the
system call itself, so the code under test meets exactly what a full disk returns); a real
filesystem too small for the second checkpoint (tmpfs, where this machine lets the test
mount one); and a standard output on /dev/full, where the samples and losses go."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wavenet.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd (Linux)")


def fail_writes_to(monkeypatch, name: str, after: int):
    """Every os.write to a file of the run named `name` (or its temporary twin) fails with
    ENOSPC, once `after` writes to it have succeeded."""
    real, done = os.write, []

    def write(fd, data):
        try:
            path = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        except OSError:
            path = ""
        if path == name or (path.startswith(name + ".") and path.endswith(".tmp")):
            if len(done) >= after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done.append(fd)
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def check_failed_write(code, err, path, step):
    assert code == 1, err
    assert err.strip() == (f"wavenet: error: could not write {path} (no space left on device); "
                           f"the checkpoint of step {step:,} is kept ({path.parent / 'checkpoint.pt'})"), err
    work = path.parent
    assert load_checkpoint(work / "checkpoint.pt")["step"] == step
    assert not list(work.glob("*.tmp")), "a temporary file was left"
    for line in (work / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # whole records only


@pytest.mark.parametrize("name, after, flags, step", [
    ("checkpoint.pt", 1, [], 10),        # the second checkpoint
    ("metrics.jsonl", 1, [], 10),        # the second record
    ("loss.png", 0, ["--max-steps", "1000", "--eval-interval", "500"], 1000),  # the plot, at the end
])
def test_every_file_of_a_run(name, after, flags, step, tmp_path, tiny_file, tiny_flags, cli, monkeypatch):
    if name == "loss.png":
        pytest.importorskip("matplotlib")
    work = tmp_path / "run"
    fail_writes_to(monkeypatch, name, after)
    code, _, err = cli("train", "-i", tiny_file, "-o", work, *tiny_flags, *flags)
    check_failed_write(code, err, work / name, step)
    monkeypatch.undo()
    if name != "loss.png":  # the run goes on from what was kept
        code, out, err = cli("train", "-o", work, "--resume", "--no-progress", "-n", "0")
        assert code == 0 and f"resuming {work} at step {step}" in out, err


def test_resume_on_a_full_disk(tmp_path, tiny_file, tiny_flags, cli, monkeypatch):
    """--resume rewrites metrics.jsonl (records after the checkpoint dropped): that write
    failing keeps the old file whole, and the checkpoint."""
    work = tmp_path / "run"
    code, _, err = cli("train", "-i", tiny_file, "-o", work, *tiny_flags)
    assert code == 0, err
    before = (work / "metrics.jsonl").read_text()
    fail_writes_to(monkeypatch, "metrics.jsonl", 0)
    code, _, err = cli("train", "-o", work, "--resume", "--max-steps", "40", "--no-progress", "-n", "0")
    check_failed_write(code, err, work / "metrics.jsonl", 40)
    assert (work / "metrics.jsonl").read_text() == before


def test_a_real_filesystem_too_small_for_the_second_checkpoint(tmp_path, tiny_file, tiny_flags):
    """A tmpfs that holds one checkpoint but not a second beside it: a new run, then --resume."""
    size = 40 * 1024  # a tiny run's checkpoint is ~23 KB; the next one is written beside it
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small filesystem here (needs root)")
    try:
        work = mnt / "run"
        for argv in (["-i", str(tiny_file), *tiny_flags], ["--resume", "--no-progress", "-n", "0"]):
            proc = subprocess.run([sys.executable, "-m", "wavenet", "train", "-o", str(work), *argv],
                                  capture_output=True, text=True)
            check_failed_write(proc.returncode, proc.stderr, work / "checkpoint.pt", 10)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_standard_output(tmp_path, tiny_file, tiny_flags):
    """`wavenet train > FILE` on a full disk: /dev/full takes nothing (ENOSPC)."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "wavenet", "train", "-i", str(tiny_file),
                               "-o", str(tmp_path / "run"), *tiny_flags], stdout=full, stderr=subprocess.PIPE,
                              text=True)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == "wavenet: error: could not write the standard output (no space left on device)\n"
