"""Ensembles on disk: `wavenet train --ensemble N` (N models of one recipe trained side by
side, one process each on its share of the CPU cores), `wavenet ensemble -o DIR RUN...`
(trained runs of any kinds joined), and the directory that holds either.

    DIR/ensemble.json    {"format": "wavenet-ensemble", "members": ["member-1", ...]}: the
                         members' run directories, relative to DIR
    DIR/member-K/        an ordinary run directory (rundir.py): member K's checkpoint,
                         metrics and loss curve, and train.log, its process's output
    DIR/.lock            held by the process that runs the members

Member K trains from seed + K - 1 (member 1 is the plain run of the same flags), on
threads // N threads, pinned to its own cores where there are at least N. On one clock
(`--time-budget`) every member fits its steps to its own share of the machine, so the
ensemble costs the wall time of one run. `wavenet eval`, `sample` and `score` (and
`wavenet.load`) take DIR as one model: `models.Ensemble`, the mean of the members'
distributions. Each member resumes on its own (`--resume`), and Ctrl-C stops every member
at its last step with its checkpoint saved.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import checkpoint as ckpt_io
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, WavenetError

FILE, FORMAT = "ensemble.json", "wavenet-ensemble"
MAX_MEMBERS = 64


def is_ensemble(path) -> bool:
    return (Path(path) / FILE).is_file()


def member_dirs(path) -> list[Path]:
    """The members' run directories that DIR/ensemble.json names, checked."""
    path = Path(path)
    try:
        record = json.loads((path / FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WavenetError(f"{path / FILE}: unreadable ({getattr(e, 'strerror', None) or e})") from None
    names = record.get("members") if isinstance(record, dict) and record.get("format") == FORMAT else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise WavenetError(f"{path / FILE}: not a wavenet ensemble record")
    dirs = [path / n for n in names]  # relative to DIR (an absolute one stays as it is)
    for d in dirs:
        if d.resolve() == path.resolve():
            raise WavenetError(f"{path / FILE}: names its own directory as a member")
    return dirs


def load_ensemble(path, device="cpu", weights: str = "best"):
    """(models.Ensemble in eval mode, vocabulary, member 1's checkpoint with `members`: N)."""
    return _load(member_dirs(path), device, weights)


def _load(dirs: list[Path], device, weights: str):
    from .models.ensemble import Ensemble
    from .rundir import RunDir
    models, first = [], None
    for member in dirs:
        if is_ensemble(member):
            raise WavenetError(f"{member}: is an ensemble itself; name its members instead")
        if not (member / RunDir.CHECKPOINT).exists():
            raise WavenetError(f"{member}: no checkpoint there (has this member trained yet?)")
        model, vocab, ckpt = RunDir(member).load_model(device, weights)
        if first is None:
            first = (vocab, ckpt)
        elif ckpt["data"]["sha256"] != first[1]["data"]["sha256"] or vocab != first[0]:
            raise WavenetError(f"{member}: trained on another data file than {dirs[0]}")
        models.append(model)
    vocab, ckpt = first
    return Ensemble(models).to(device).eval(), vocab, {**ckpt, "members": len(models)}


def join(work_dir, runs: list, device="cpu"):
    """`wavenet ensemble -o DIR RUN...`: DIR/ensemble.json naming trained runs (any kinds with
    a cache, one data file), each by its path relative to DIR, so the two move together. The
    runs are loaded and checked before anything is written. Returns `load_ensemble`'s."""
    from .rundir import RunDir
    path = Path(work_dir)
    if not runs:
        raise WavenetError("ensemble needs at least one run directory", param="runs")
    if path.exists() and not path.is_dir():
        raise WavenetError(f"work_dir {path}: exists and is not a directory", param="work_dir")
    if (path / RunDir.CHECKPOINT).exists() or is_ensemble(path):
        raise WavenetError(f"{path}: holds a run already: choose another work_dir", param="work_dir")
    dirs = [Path(r) for r in runs]
    if len({d.resolve() for d in dirs}) != len(dirs):
        raise WavenetError("ensemble: a run is named twice", param="runs")
    if any(d.resolve() == path.resolve() for d in dirs):
        raise WavenetError(f"{path}: a member cannot be the ensemble's own directory", param="work_dir")
    loaded = _load(dirs, device, "best")  # every check, before anything is written
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WavenetError(f"work_dir {path}: cannot create it ({e.strerror})", param="work_dir") from None
    names = [os.path.relpath(d.resolve(), path.resolve()) for d in dirs]
    record = json.dumps({"format": FORMAT, "members": names}, indent=1) + "\n"
    with RunDir(path)._writing(path / FILE):
        ckpt_io.write_atomic(path / FILE, record.encode("utf-8"))
    return loaded


# ---------------------------------------------------------------------- training

def shares(n: int, cpus: list[int], threads: int) -> list[tuple[list[int], int]]:
    """Each of n members' (cores to pin it to, or [] for no pinning; threads): the cores in
    n consecutive groups when there are at least n, else no pinning and one thread each."""
    if len(cpus) < n:
        return [([], 1)] * n
    per = max(1, min(threads, len(cpus)) // n)
    size = len(cpus) // n
    return [(cpus[k * size:(k + 1) * size], per) for k in range(n)]


def train_ensemble(args, check) -> int:
    """`wavenet train --ensemble N`: `check(member_args)` validates one member's flags
    (commands._prepare) before anything is written; then N member processes, watched."""
    from .rundir import RunDir
    n = args.ensemble
    if not 1 <= n <= MAX_MEMBERS:
        raise WavenetError(f"ensemble must be between 1 and {MAX_MEMBERS}, got {n}", param="ensemble")
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise WavenetError("ensemble: not under torchrun (each member is its own process already)",
                           param="ensemble")
    root = RunDir(args.work_dir)
    if root.path.exists() and not root.path.is_dir():
        raise WavenetError(f"work_dir {root.path}: exists and is not a directory", param="work_dir")
    if (root.path / RunDir.CHECKPOINT).exists():
        raise WavenetError(f"{root.path}: holds a single run's checkpoint, not an ensemble: choose another "
                           "work_dir", param="work_dir")
    names = [f"member-{k + 1}" for k in range(n)]
    if args.resume:
        if not is_ensemble(root.path):
            raise WavenetError(f"resume: no ensemble in {root.path}", param="resume")
        if [p.name for p in member_dirs(root.path)] != names:
            raise WavenetError(f"resume: {root.path / FILE} holds {len(member_dirs(root.path))} members, "
                               f"not {n}", param="ensemble")
    members = [_member_args(args, root.path / name, k) for k, name in enumerate(names)]
    if not args.resume:
        for m in members:
            if (m.work_dir / RunDir.CHECKPOINT).exists():
                raise WavenetError(f"{m.work_dir / RunDir.CHECKPOINT} exists: pass resume to continue the "
                                   "ensemble, or choose another work_dir", param=("resume", "work_dir"))
    for m in members:
        check(m)  # flags, input file, each member's checkpoint on resume: one line, nothing written
    root.create(resume=True)  # the directory and its lock; no checkpoint of its own
    if not args.resume:
        with root._writing(root.path / FILE):
            ckpt_io.write_atomic(root.path / FILE, (json.dumps({"format": FORMAT, "members": names}, indent=1)
                                                    + "\n").encode("utf-8"))
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    plan = shares(n, cpus, torch.get_num_threads())
    for m in members:
        m.work_dir.mkdir(exist_ok=True)
    how = ", ".join(f"{m.work_dir.name}{'' if args.resume else f' seed {m.seed}'} on {t} thread"
                    f"{'s' * (t != 1)}{f' (cores {_cores(c)})' if c else ''}"
                    for m, (c, t) in zip(members, plan))
    print(f"ensemble of {n} in {root.path}: {how}; each member's output in its train.log", flush=True)
    procs = [_launch(m, cpus_, threads) for m, (cpus_, threads) in zip(members, plan)]
    codes = _watch(procs, members)
    return _report(args, root.path, members, codes)


def _cores(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


def _member_args(args, work_dir: Path, k: int) -> argparse.Namespace:
    m = argparse.Namespace(**vars(args))
    m.work_dir, m.ensemble, m.num_samples, m.no_progress = work_dir, None, 0, True
    if not args.resume:  # on resume each member's seed is its checkpoint's
        from .config import DEFAULT_KIND, RECIPES
        base = args.seed if args.seed is not None else RECIPES[args.model or DEFAULT_KIND].seed
        m.seed = base + k
    return m


def _launch(m: argparse.Namespace, cpus: list[int], threads: int) -> subprocess.Popen:
    spec = json.dumps({"args": {**vars(m), "work_dir": str(m.work_dir)}, "cpus": cpus, "threads": threads})
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONUNBUFFERED": "1"}
    log = open(m.work_dir / "train.log", "ab")
    try:
        code = "from wavenet.ensemble import member_main; member_main()"
        return subprocess.Popen([sys.executable, "-c", code, spec], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    finally:
        log.close()


def member_main() -> None:
    """One member's process: `wavenet train` with the flags the parent passed, as JSON."""
    spec = json.loads(sys.argv[1])
    _stop_with_parent()
    if spec["cpus"]:
        os.sched_setaffinity(0, spec["cpus"])
    torch.set_num_threads(spec["threads"])
    from .cli import flag_name
    from .commands import train
    try:
        code = train(argparse.Namespace(**spec["args"]))
    except WavenetError as e:
        print(f"wavenet: error: {e.renamed(flag_name)}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    sys.stdout.flush()
    sys.exit(code)


def _stop_with_parent() -> None:
    """Linux: SIGTERM this member when the process that started it dies (killed, say), so it
    saves and stops rather than train on unwatched."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _watch(procs: list[subprocess.Popen], members) -> list[int]:
    """Wait for every member, printing each val loss as its metrics record lands. The members
    run in sessions of their own, so a terminal's Ctrl-C reaches this process alone: it
    passes each signal (SIGINT, SIGTERM) on to every member once, and they save and stop
    after their step (a second Ctrl-C aborts them, as it does one run). A member that fails
    stops the others the same way (SIGTERM), so none trains on for nothing."""
    seen = [len(_records(m.work_dir / "metrics.jsonl")) for m in members]  # a resumed run's are old
    asked = []

    def forward(signum, frame):
        asked.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            for k, m in enumerate(members):
                records = _records(m.work_dir / "metrics.jsonl")
                for r in records[seen[k]:]:
                    if "val_loss" in r:
                        print(f"{m.work_dir.name}: step {r['step']:,}  val {r['val_loss']:.4f}", flush=True)
                seen[k] = max(seen[k], len(records))
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                break
            if not asked and any(c not in (None, EXIT_OK, EXIT_INTERRUPTED) for c in codes):
                forward(signal.SIGTERM, None)
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return [p.wait() for p in procs]


def _records(path: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being appended right now
            break
    return out


def _report(args, root: Path, members, codes: list[int]) -> int:
    failed = [(m, c) for m, c in zip(members, codes) if c not in (EXIT_OK, EXIT_INTERRUPTED)]
    for m, c in failed:
        print(f"wavenet: error: {m.work_dir.name} failed (exit {c}): {_last_line(m.work_dir / 'train.log')}",
              file=sys.stderr)
    if failed:
        return EXIT_FAILED
    if any(c == EXIT_INTERRUPTED for c in codes):
        print(f"interrupted: each member's checkpoint is kept; continue with: wavenet train -o {root} "
              f"--ensemble {len(members)} --resume")
        return EXIT_INTERRUPTED
    from .commands import _print_marked, _sample, resolve_device
    from .evaluate import split_loss
    from .rundir import load_split
    device = resolve_device(args.device)
    model, vocab, ckpt = load_ensemble(root, device)
    _, val_words, _ = splits = load_split(ckpt["data"], args.input_file)
    for m in members:
        records = [r for r in _records(m.work_dir / "metrics.jsonl") if "val_loss" in r]
        if not records:
            print(f"{m.work_dir.name}: no val loss yet")
            continue
        best = min(records, key=lambda r: r["val_loss"])
        print(f"{m.work_dir.name}: best val loss {best['val_loss']:.4f} at step {best['step']:,}; training "
              f"{records[-1].get('train_s', 0):.1f} s")
    print(f"ensemble val loss {split_loss(model, val_words, vocab, device):.4f} (the mean of the members' "
          "distributions, each at its best weights)")
    if args.num_samples:
        generator = torch.Generator().manual_seed(ckpt["train_config"]["seed"])
        _print_marked(_sample(model, vocab, args.num_samples, generator, ckpt["data"], device), splits)
    return EXIT_OK


def _last_line(path: Path) -> str:
    try:
        lines = [x for x in path.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
    except OSError:
        return "(no output)"
    return lines[-1][:300] if lines else "(no output)"
