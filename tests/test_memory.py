"""Resident memory (slow): flat over a long run; bounded when one line is very long or the
vocabulary is big."""

import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

SECONDS = float(os.environ.get("WAVENET_SOAK_SECONDS", 180))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads resident memory from Linux /proc")
@pytest.mark.parametrize("model", ["conv", "mlp"])
def test_resident_memory_stays_flat(tmp_path, names_path, model):
    cmd = [sys.executable, "-m", "wavenet", "train", "--model", model, "-i", str(names_path),
           "-o", str(tmp_path / "run"), "--max-steps", "100000000", "--eval-interval", "250", "--no-progress",
           "-n", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []
    try:
        # the clock starts once training is under way (its first checkpoint), not at launch:
        # a slow start on a busy machine must not land in the thirds that are compared
        while not (tmp_path / "run" / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        t0 = time.time()
        while time.time() - t0 < SECONDS:
            time.sleep(1.0)
            assert proc.poll() is None, proc.stderr.read()
            samples.append(rss_mib(proc.pid))
    finally:
        proc.kill()
        proc.communicate()
    third = len(samples) // 3
    early, late = statistics.median(samples[third:2 * third]), statistics.median(samples[2 * third:])
    print(f"\n{model}: RSS MiB min {min(samples):.0f} early {early:.0f} late {late:.0f} "
          f"max {max(samples):.0f} over {len(samples)} s")
    assert late - early < 25, f"resident memory grew from {early:.0f} MiB to {late:.0f} MiB"


# Runs a command and prints the peak resident memory (KiB) of it and its children: a fresh
# wrapper process, so no earlier child of the test process can count.
PEAK = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def train_and_eval_peaks(path: Path, work: Path, *flags) -> dict:
    """Peak resident MiB of `wavenet train -i path -o work FLAGS`, then of `wavenet eval`."""
    peaks = {}
    train = ["train", "-i", str(path), "-o", str(work), *flags, "-n", "0", "--no-progress"]
    for name, argv in (("train", train), ("eval", ["eval", "-o", str(work)])):
        proc = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-m", "wavenet", *argv],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        peaks[name] = int(proc.stdout.splitlines()[-1]) / 1024
    return peaks


@pytest.mark.slow
def test_one_long_line_keeps_train_and_eval_under_1_5_gb(tmp_path, names):
    """3,000 names and one 990-character line: before evaluation batches were bounded by
    padded positions, `wavenet train` on such a file peaked at 4.7 GB."""
    path = tmp_path / "long.txt"
    path.write_text("\n".join(names[:3000] + ["".join(random.Random(0).choices("abcdefghij", k=990))]) + "\n")
    peaks = train_and_eval_peaks(path, tmp_path / "run", "--max-steps", "20")
    print(f"\npeak RSS MiB: train {peaks['train']:.0f}, eval {peaks['eval']:.0f}")
    assert max(peaks.values()) < 1.5 * 1024, peaks


def cjk_file(path: Path) -> Path:
    """20,000 lines of 2-4 characters drawn from 3,000 CJK characters (vocabulary 3,001)."""
    rng = random.Random(0)
    chars = [chr(0x4E00 + i) for i in range(3000)]
    lines = chars + ["".join(rng.choices(chars, k=rng.randint(2, 4))) for _ in range(17_000)]
    rng.shuffle(lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["conv", "mlp", "wavenet"])
def test_a_big_vocabulary_trains_and_evaluates_under_1_5_gb(tmp_path, kind):
    """Evaluation batches bounded in logits (positions x vocabulary): before, a 200-step conv
    run on this file peaked at 2.28 GB, its evaluation batches holding 32,768 x 3,001 logits."""
    peaks = train_and_eval_peaks(cjk_file(tmp_path / "cjk.txt"), tmp_path / "run", "--model", kind,
                                 "--max-steps", "200")
    print(f"\n{kind}, vocabulary 3,001: peak RSS MiB train {peaks['train']:.0f}, eval {peaks['eval']:.0f}")
    assert max(peaks.values()) < 1.5 * 1024, peaks
