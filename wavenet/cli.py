"""The command line: `wavenet train | sample | eval | score | ensemble | convert | bench`.

The model and training flags are made from the config dataclasses (config.py): one flag
per field, its help text from the field, its default shown per model kind. Every user
mistake raises WavenetError below; `main` prints its one line, with the library's parameter
names turned into these flags, and returns the exit code errors.py assigns.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys

from .config import DEFAULT_KIND, MODEL_CONFIGS, RECIPES, flag_fields
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, WavenetError

# Library parameter -> the flag that sets it, where the two are not simply `--name-with-dashes`.
FLAGS = {"num": "-n/--num-samples", "num_samples": "-n/--num-samples", "work_dir": "-o/--work-dir",
         "input_file": "-i/--input-file", "kind": "--model", "into": "--into", "runs": "RUN"}
PARSERS = {"int": int, "float": float, "str": str}


def flag_name(param: str) -> str:
    return FLAGS.get(param, "--" + param.replace("_", "-"))


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit 2, like every other mistake."""

    def error(self, message):
        raise WavenetError(f"{self.prog}: {message}")


def add_config_flags(parser: argparse.ArgumentParser, defaults: dict) -> None:
    """One flag per field of the configs in `defaults` ({kind: config instance}), left None
    when not given; the help shows the default, per kind where the kinds differ. A field's
    metadata gives its help, optionally a metavar and a `parse` function (default: its type)."""
    seen: dict[str, tuple[dataclasses.Field, dict, dict]] = {}
    for kind, config in defaults.items():
        for f in flag_fields(config):
            _, values, helps = seen.setdefault(f.name, (f, {}, {}))
            values[kind] = getattr(config, f.name)
            helps.setdefault(f.metadata["help"], []).append(kind)
    for name, (f, values, helps) in seen.items():
        if len(set(values.values())) == 1 and len(values) == len(defaults):
            shown = str(next(iter(values.values())))
        else:
            shown = ", ".join(f"{kind} {value}" for kind, value in values.items())
        # kinds that mean different things by one field: each meaning, with its kinds
        text = next(iter(helps)) if len(helps) == 1 else "; ".join(
            f"{', '.join(kinds)}: {meaning}" for meaning, kinds in helps.items())
        parse = f.metadata.get("parse") or (f.type if isinstance(f.type, type) else PARSERS[f.type])
        parser.add_argument("--" + name.replace("_", "-"), type=parse, default=None,
                            metavar=f.metadata.get("metavar"), help=f"{text} [{shown}]")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="wavenet",
               description="Character-level WaveNet language models (makemore part 5, finished).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    def common(sp):
        sp.add_argument("-o", "--work-dir", default="out", help="run directory (checkpoint, metrics) [out]")
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="[auto]")

    t = sub.add_parser("train", help="train a model on a one-item-per-line text file")
    common(t)
    t.add_argument("-i", "--input-file", default=None, help="one item per line [data/names.txt]")
    t.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --work-dir; with a larger --max-steps (a budget "
                   "run: --time-budget), train it further, the schedule re-aimed at the new end")
    t.add_argument("--model", choices=list(MODEL_CONFIGS), default=None, help=f"[{DEFAULT_KIND}]")
    add_config_flags(t, {kind: cls() for kind, cls in MODEL_CONFIGS.items()})
    add_config_flags(t, RECIPES)
    t.add_argument("--max-length", type=int, default=1000, help="longest line accepted, in characters [1000]")
    t.add_argument("-n", "--num-samples", type=int, default=20, help="samples printed at the end [20]")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--ensemble", type=int, default=None, metavar="N",
                   help="train N models of these flags side by side, from seeds SEED, SEED + 1, ..., each "
                   "on its share of the cores; eval, sample and score then take the mean of their "
                   "distributions [one model]")
    t.add_argument("--dist-timeout", type=float, default=300, metavar="SECONDS",
                   help="under torchrun: how long a process waits for the others in a collective before "
                   "it stops with an error [300]")

    data_help = ("the run's data file, if it has moved (checked against the recorded SHA-256) "
                 "[the recorded path]")
    s = sub.add_parser("sample", help="sample from the model in --work-dir")
    common(s)
    s.add_argument("--seed", type=int, default=None, help="seed for reproducible samples [fresh each run]")
    s.add_argument("-n", "--num-samples", type=int, default=20, help="[20]")
    s.add_argument("--temperature", type=float, default=1.0, help="[1.0]")
    s.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest characters only")
    s.add_argument("--prefix", default="", help="start every sample with these characters")
    s.add_argument("-i", "--input-file", default=None, help=data_help)

    e = sub.add_parser("eval", help="train / val / test loss of the model in --work-dir, and on the "
                       "val and test names not in train")
    common(e)
    e.add_argument("-i", "--input-file", default=None, help=data_help)
    e.add_argument("--splits", default="train,val,test", help="comma-separated, which of train, val and "
                   "test to score (val and test with their unseen names): tune on val, read test once "
                   "[train,val,test]")

    sc = sub.add_parser("score", help="log-likelihood, nats per character and perplexity of each line of "
                        "a file, under the model in --work-dir")
    common(sc)
    sc.add_argument("file", nargs="?", default="-", metavar="FILE",
                    help="one item per line; - or none: the standard input [-]")
    sc.add_argument("--format", choices=["tsv", "json"], default="tsv",
                    help="tsv: a header, then one tab-separated row per line; json: one JSON object per "
                    "line [tsv]")
    sc.add_argument("--sort", action="store_true", help="rank: the likeliest per character first, lines "
                    "that could not be scored last (holds every row until the end)")
    sc.add_argument("--max-length", type=int, default=1000,
                    help="longest line scored, in characters; longer ones get an error row [1000]")
    for sp in (s, e, sc):
        sp.add_argument("--weights", choices=["best", "last"], default="best", help="the run's weights "
                        "with the best val loss, or the last (where training stopped) [best]")

    en = sub.add_parser("ensemble", help="join trained runs (any kinds, one data file) into one model: "
                        "eval, sample and score then take the mean of their distributions")
    en.add_argument("-o", "--work-dir", required=True, help="the ensemble's new directory (ensemble.json)")
    en.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="[auto]")
    en.add_argument("runs", nargs="+", metavar="RUN", help="run directories, each of one trained model")
    en.add_argument("-i", "--input-file", default=None, help=data_help)

    c = sub.add_parser("convert",
                       help="turn the MLP checkpoint in --work-dir into an equivalent conv checkpoint")
    c.add_argument("-o", "--work-dir", default="out", help="run directory holding an MLP checkpoint [out]")
    c.add_argument("--into", default=None, help="new run directory for the conv checkpoint [WORK_DIR-conv]")

    b = sub.add_parser("bench", help="MLP vs conv across contexts, then every kind side by side: training, "
                       "evaluation, memory, sampling")
    b.add_argument("--full", action="store_true", help="the whole training split and 1,000-name lecture loop "
                   "(tens of minutes on 2 cores); default: quick mode, under 2 minutes")
    b.add_argument("--speedrun", action="store_true", help="instead: time to val <= 1.993, 1.95 and 1.92 of "
                   "every kind's default recipe, each trained in this process (about 45 minutes on 2 cores)")
    b.add_argument("--kinds", default=None, help="comma-separated model kinds for the side-by-side section "
                   "and the speedrun [all: mlp,conv,wavenet,lstm,gru,transformer]")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="[auto]")
    b.add_argument("-i", "--input-file", default=None,
                   help="names to build both data sets from [data/names.txt]")
    b.add_argument("--blocks", default=None, help="comma-separated block sizes [8,16,32,64]")
    b.add_argument("--repeats", type=int, default=None, help="timed repeats per figure, median reported [5]")
    b.add_argument("--out", default="bench", help="folder for bench.json and speedup.png (ignored by git) "
                   "[bench]")
    b.add_argument("--log", default=None, metavar="FILE", help="also append the run's line to this "
                   "performance log, e.g. benchmarks/perf_log.md [none]")
    return p


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        from .commands import COMMANDS  # torch is imported only once the flags parse
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a full disk behind a redirected stdout shows here, not at exit
        return code
    except WavenetError as e:
        print(f"wavenet: error: {e.renamed(flag_name)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("wavenet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `wavenet sample | head`
        _drop_stdout()
        return EXIT_OK
    except OSError as e:
        if e.errno not in OUTPUT_ERRORS or e.filename is not None:
            raise  # not a write to the standard output: a bug, shown as one
        _drop_stdout()
        print(f"wavenet: error: could not write the standard output ({e.strerror.lower()})", file=sys.stderr)
        return EXIT_FAILED


OUTPUT_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)  # a full disk behind stdout, ...


def _drop_stdout() -> None:
    """What is still buffered for a standard output that cannot take it goes nowhere, so
    the interpreter's last flush at exit does not fail again with a traceback."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor (a test's captured stdout)
        pass


if __name__ == "__main__":
    sys.exit(main())
