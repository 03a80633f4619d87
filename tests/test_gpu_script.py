"""benchmarks/gpu.sh, the prepared GPU session: it parses, and (slow) its CPU rehearsal runs
every step end to end, as it will run on a GPU machine: from the working tree, no install."""

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.sh"
STEPS = ["machine", "cuda-tests",
         *(f"{what}-{kind}-{dtype}" for kind in ("conv", "wavenet") for dtype in ("float32", "bf16")
           for what in ("train", "eval")),
         "torchrun-2", "bench-quick", "bench-full"]


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.slow
def test_the_rehearsal_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "gpu"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHON=sys.executable, GPU_BUDGET_S="600")
    r = subprocess.run(["bash", str(SCRIPT), "--rehearse", str(out)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    summary = (out / "summary.md").read_text()
    for step in STEPS:
        assert f"| {step} | ok |" in summary, (step, summary)
    assert re.search(r"^val +loss [0-9.]+", (out / "logs" / "eval-wavenet-bf16.log").read_text(), re.M)
    assert re.search(r"\| eval-wavenet-bf16 \| ok \| [0-9]+ s \| val loss [0-9.]+;test loss", summary)
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    assert "summary.md" in names and not [n for n in names if n.endswith(".pt")]
    assert any(n.endswith("bench.json") for n in names)
