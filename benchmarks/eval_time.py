"""Seconds of `split_loss` on the lecture's val and train splits, per model kind, fresh models.

    python benchmarks/eval_time.py [--kinds conv,wavenet] [--repeats 3]

Median of the repeats, each kind timed in turn in one process; prints one line per figure
and the machine's matrix-product rate beside them (the same 2,048 x 256 x 128 product as
`wavenet bench`). Uses only the public API, so it times whichever version of the package
Python imports: the installed one, or another checkout's with
PYTHONPATH=/path/to/checkout python benchmarks/eval_time.py.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

import wavenet
from wavenet import build_model, load_words, split_words
from wavenet.config import model_config
from wavenet.data import Vocab
from wavenet.evaluate import split_loss

NAMES = Path(__file__).resolve().parent.parent / "data" / "names.txt"


def gemm_gflops(repeats: int = 50) -> float:
    a, b = torch.randn(2048, 256), torch.randn(256, 128)
    torch.mm(a, b)
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return repeats * 2 * 2048 * 256 * 128 / (time.perf_counter() - t0) / 1e9


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kinds", default="conv,wavenet")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("-i", "--input-file", default=str(NAMES))
    args = p.parse_args()
    words = load_words(args.input_file)
    vocab = Vocab.from_words(words)
    train, val, _ = split_words(words)
    print(f"wavenet from {Path(wavenet.__file__).parent}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; matrix product {gemm_gflops():.0f} GFLOP/s")
    for kind in args.kinds.split(","):
        model = build_model(model_config(kind), len(vocab), torch.Generator().manual_seed(42)).eval()
        for name, split in (("val", val), ("train", train)):
            times, loss = [], None
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                loss = split_loss(model, split, vocab)
                times.append(time.perf_counter() - t0)
            print(f"{kind:8} {name:5} split_loss {statistics.median(times):7.2f} s (median of "
                  f"{args.repeats}; min {min(times):.2f}, max {max(times):.2f}), loss {loss:.6f}", flush=True)


if __name__ == "__main__":
    main()
