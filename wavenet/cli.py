"""The command line: `wavenet train | sample | eval`.

Every user mistake raises WavenetError somewhere below; `main` prints its one line to
stderr and exits 2. Ctrl-C during training saves a checkpoint and exits 130.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import WavenetError

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit 2, like every other mistake."""

    def error(self, message):
        raise WavenetError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="wavenet", description="Character-level WaveNet language models (makemore part 5, finished).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    def common(sp):
        sp.add_argument("-o", "--work-dir", default="out", help="run directory (checkpoint, metrics) [out]")
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="[auto]")

    t = sub.add_parser("train", help="train a model on a one-item-per-line text file")
    common(t)
    t.add_argument("--seed", type=int, default=None, help="seeds the init, the batches and the samples [42]")
    t.add_argument("-i", "--input-file", default=None, help="one item per line [data/names.txt]")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work-dir")
    t.add_argument("--model", choices=["conv", "mlp"], default=None, help="[conv]")
    t.add_argument("--block-size", type=int, default=None, help="context length, a power of two [8]")
    t.add_argument("--n-embd", type=int, default=None, help="embedding width [24]")
    t.add_argument("--n-hidden", type=int, default=None, help="hidden width [128]")
    t.add_argument("--max-steps", type=int, default=None, help="[conv 25000, mlp 200000]")
    t.add_argument("--batch-size", type=int, default=None, help="names (conv) or windows (mlp) per step [32]")
    t.add_argument("--learning-rate", type=float, default=None, help="[0.1]")
    t.add_argument("--decay-at", type=float, default=None, metavar="FRACTION",
                   help="the learning rate drops tenfold after this fraction of --max-steps [conv 0.9, mlp 0.75]")
    t.add_argument("--eval-interval", type=int, default=None,
                   help="steps between val loss and checkpoint [conv 2500, mlp 10000]")
    t.add_argument("--group-by-length", type=int, default=None, metavar="K",
                   help="conv: length-sort names within chunks of K batches (less padding, worse BatchNorm) [0]")
    t.add_argument("--max-length", type=int, default=1000, help="longest line accepted, in characters [1000]")
    t.add_argument("-n", "--num-samples", type=int, default=20, help="samples printed at the end [20]")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="sample from the model in --work-dir")
    common(s)
    s.add_argument("--seed", type=int, default=None, help="seed for reproducible samples [fresh each run]")
    s.add_argument("-n", "--num-samples", type=int, default=20, help="[20]")
    s.add_argument("--temperature", type=float, default=1.0, help="[1.0]")
    s.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest characters only")
    s.add_argument("--prefix", default="", help="start every sample with these characters")

    e = sub.add_parser("eval", help="train / val / test loss of the model in --work-dir")
    common(e)

    c = sub.add_parser("convert", help="turn the MLP checkpoint in --work-dir into an equivalent conv checkpoint")
    c.add_argument("-o", "--work-dir", default="out", help="run directory holding an MLP checkpoint [out]")
    c.add_argument("--into", default=None, help="new run directory for the conv checkpoint [WORK_DIR-conv]")

    b = sub.add_parser("bench", help="MLP vs conv: evaluation, training, sampling, memory, across contexts")
    b.add_argument("--full", action="store_true", help="the whole training split and 1,000-name lecture loop "
                   "(tens of minutes on 2 cores); default: quick mode, under 2 minutes")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="[auto]")
    b.add_argument("-i", "--input-file", default=None, help="names to build both data sets from [data/names.txt]")
    b.add_argument("--blocks", default=None, help="comma-separated block sizes [8,16,32,64]")
    b.add_argument("--repeats", type=int, default=None, help="timed repeats per figure, median reported [5]")
    b.add_argument("--out", default="benchmarks/results", help="folder for bench.json and speedup.png "
                   "[benchmarks/results]")
    b.add_argument("--log", default="benchmarks/perf_log.md", help="performance log to append a line to "
                   "[benchmarks/perf_log.md]")
    return p


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        from . import commands  # torch is imported only once the flags are known to be good
        return getattr(commands, args.command)(args)
    except WavenetError as e:
        print(f"wavenet: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("wavenet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `wavenet sample | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
