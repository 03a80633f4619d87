"""The conv's fused training step with its BatchNorm in C (wavenet/models/bn_tanh.c) against
the same step on torch operators: one process, the same batch and weights, the two
alternating, median ms a step. Prints a markdown table.

    python benchmarks/norm_kernels.py                  # the bench's shapes at 256 and 2,048 positions
    python benchmarks/norm_kernels.py names/64@256 fullnames/32@2048
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from wavenet import bench
from wavenet.batches import NameBatches
from wavenet.config import TrainConfig, check_block_size
from wavenet.data import load_words
from wavenet.errors import WavenetError
from wavenet.models import native
from wavenet.train import make_optimizer

DEFAULT = ["names/8@256", "names/64@256", "fullnames/8@256", "fullnames/32@256", "fullnames/64@256",
           "names/32@2048", "fullnames/64@2048"]


def measure(names, dataset: str, block: int, positions: int, repeats: int = 9, steps: int = 100) -> dict:
    words, vocab = bench.datasets(names, (dataset,))[dataset]
    _, conv = bench.pair(vocab, block, bench.QUICK)
    conv.train()
    per_name = sum(len(w) + 1 for w in words) / len(words)
    batch, _ = NameBatches(words, vocab, conv.block_size, max(2, round(positions / per_name)), seed=0).next()
    models = {"torch": conv, "C": copy.deepcopy(conv)}
    opts = {k: make_optimizer(m, TrainConfig(learning_rate=1e-4)) for k, m in models.items()}
    real = native.kernels

    def run(kind, n):
        native.kernels = real if kind == "C" else (lambda like: None)
        try:
            for _ in range(n):
                _, loss = models[kind](batch)
                opts[kind].zero_grad(set_to_none=True)
                loss.backward()
                opts[kind].step()
        finally:
            native.kernels = real

    times = {k: [] for k in models}
    for k in models:
        run(k, steps // 2)  # warm-up
    for _ in range(repeats):
        for k in models:
            t0 = time.perf_counter()
            run(k, steps)
            times[k].append((time.perf_counter() - t0) / steps * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}
    return dict(rows=len(batch.ids), torch_ms=ms["torch"], c_ms=ms["C"], ratio=ms["torch"] / ms["C"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="*", default=DEFAULT, help="DATA/BLOCK@POSITIONS (default: %(default)s)")
    args = ap.parse_args(argv)
    shapes = []
    for shape in args.shapes:
        try:
            data, rest = shape.split("/")
            block, positions = map(int, rest.split("@"))
            if data not in ("names", "fullnames") or positions < 1:
                raise ValueError
            check_block_size(block)
        except (ValueError, WavenetError):
            print(f"bad shape {shape!r}: expected DATA/BLOCK@POSITIONS with DATA names or fullnames, "
                  "e.g. names/64@256", file=sys.stderr)
            return 2
        shapes.append((data, block, positions))
    if native.library() is None:
        print(f"no C kernels here: {native.status()}", file=sys.stderr)
        return 1
    names = load_words(Path(__file__).resolve().parent.parent / "data" / "names.txt")
    print(f"{native.status()}; {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| data / block | positions (rows) | torch ops ms | C ms | torch / C |\n|---|---:|---:|---:|---:|")
    for data, block, positions in shapes:
        r = measure(names, data, block, positions)
        print(f"| {data}/{block} | {positions:,} ({r['rows']:,}) | {r['torch_ms']:.3f} | {r['c_ms']:.3f} | "
              f"{r['ratio']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
