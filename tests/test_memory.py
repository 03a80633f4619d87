"""A long training run with frequent checkpoints keeps its resident memory flat (slow)."""

import os
import statistics
import subprocess
import sys
import time

import pytest

SECONDS = float(os.environ.get("WAVENET_SOAK_SECONDS", 180))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc to read resident memory")
@pytest.mark.parametrize("model", ["conv", "mlp"])
def test_resident_memory_stays_flat(tmp_path, names_path, model):
    cmd = [sys.executable, "-m", "wavenet", "train", "--model", model, "-i", str(names_path), "-o", str(tmp_path / "run"),
           "--max-steps", "100000000", "--eval-interval", "250", "--no-progress", "-n", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []
    try:
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
    print(f"\n{model}: RSS MiB min {min(samples):.0f} early {early:.0f} late {late:.0f} max {max(samples):.0f} "
          f"over {len(samples)} s")
    assert late - early < 25, f"resident memory grew from {early:.0f} MiB to {late:.0f} MiB"
