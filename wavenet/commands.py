"""What each CLI command does, on top of the library. `COMMANDS` maps a command's name to
its function; each takes the parsed flags and returns an exit code (errors.py)."""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed
from .batches import eval_batches, make_batches
from .checkpoint import model_from_checkpoint, model_state
from .config import (
    DEFAULT_KIND,
    MODEL_CONFIGS,
    RECIPES,
    TrainConfig,
    config_from_record,
    flag_fields,
    model_config,
)
from .data import Vocab, load_words, open_text_file, read_lines, split_words
from .distributed import GroupError
from .errors import EXIT_INTERRUPTED, EXIT_OK, WavenetError
from .evaluate import sample_for_loss, shard_batches, split_loss
from .models import ConvWaveNet, build_model
from .rundir import RunDir, data_record, load_split
from .sample import generate, novelty
from .train import (
    Diverged,
    WeightAverage,
    extend_recipe,
    fit_to_budget,
    make_optimizer,
    refit_to_budget,
    train_loop,
)

REPO_DATA = Path(__file__).resolve().parent.parent / "data" / "names.txt"
MODEL_FIELDS = list(dict.fromkeys(f.name for cls in MODEL_CONFIGS.values() for f in dataclasses.fields(cls)))


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise WavenetError("device cuda: no CUDA device is available (this torch build or machine has none)",
                           param="device")
    return name


def default_input() -> Path:
    for candidate in (Path("data/names.txt"), REPO_DATA):
        if candidate.is_file():
            return candidate
    raise WavenetError("no input file: pass input_file (data/names.txt is not here)", param="input_file")


def train(args) -> int:
    # check: the flags, the input file and any checkpoint, before anything is written
    if args.num_samples < 0:
        raise WavenetError(f"num_samples must be 0 or more, got {args.num_samples}", param="num_samples")
    if getattr(args, "ensemble", None) is not None:
        from .ensemble import train_ensemble
        return train_ensemble(args, check=lambda m: _prepare(m, resolve_device(m.device), None))
    if not args.dist_timeout > 0:
        raise WavenetError(f"dist_timeout must be a positive number of seconds, got {args.dist_timeout}",
                           param="dist_timeout")
    group, device = distributed.setup(resolve_device(args.device), args.dist_timeout)  # None: one process
    clean = False
    try:
        code = _train(args, device, group)
        clean = True
        return code
    except (RuntimeError, OSError) as e:
        if group is None or not distributed.is_group_failure(e):
            raise
        raise GroupError(f"rank {group.rank} of {group.world_size}: the process group failed, so this rank "
                         f"stops ({distributed.first_line(e)}); {RunDir(args.work_dir).kept()}") from None
    finally:
        distributed.teardown(clean)


def _train(args, device: str, group) -> int:
    """`wavenet train` in one process, or in one rank of a torchrun group (rank 0 writes)."""
    main = group is None or group.is_main
    say = print if main else _quiet
    # check and build, on every rank, before anything is written; under torchrun, all ranks
    # start or none does (distributed.start_together), from the same file
    job = distributed.start_together(lambda: _prepare(args, device, group))
    if not distributed.same_everywhere(job.data["sha256"]):
        raise WavenetError(f"input_file: the processes of the group read different files (this one: "
                           f"{job.input_file})", param="input_file")
    distributed.start_together(lambda: job.run.create(resume=args.resume) if main else None)

    # resume, or fit the time budget
    session = _Session(job, device, group, announce=args.no_progress)
    if job.resumed is not None:
        session.resume(job.resumed)
        if main:
            job.run.truncate_metrics(session.step)
        recorded = job.resumed["train_config"]["max_steps"]
        longer = "" if job.cfg.max_steps == recorded else (
            f", extended from {recorded:,} to {job.cfg.max_steps:,} steps (the schedule re-aimed at the end)")
        say(f"resuming {job.run.path} at step {session.step:,}{longer}")
    train_words, val_words, _ = job.splits
    ranks = "" if group is None else f"; {group.world_size} processes"
    say(f"{job.model.kind} model, {sum(p.numel() for p in job.model.parameters()):,} parameters; "
        f"{len(job.words):,} items, vocabulary {len(job.vocab)}; {len(train_words):,} train / "
        f"{len(val_words):,} val names; device {device}{ranks}")
    if job.resumed is None and job.cfg.time_budget:
        session.fit_budget(eval_interval_given=args.eval_interval is not None, say=say)

    # train
    session.start_clock()
    try:
        result = train_loop(job.model, session.optimizer, job.batches, job.cfg, start_step=session.step,
                            lossi=session.lossi, on_interval=session.on_interval,
                            progress=main and not args.no_progress, ddp=session.ddp, average=session.average)
    except Diverged as e:
        raise Diverged(f"{e}; {job.run.kept('last good ')}", param=e.param) from None
    session.tick()
    if result.interrupted:
        session.save(result.step)
        distributed.barrier()  # no rank leaves before the checkpoint is written
        say(f"interrupted at step {result.step:,}: checkpoint saved to {job.run.checkpoint}; "
            f"continue with: wavenet train -o {job.run.path} --resume")
        return EXIT_INTERRUPTED

    # report
    _report(job, session, result.step, args.num_samples, say, device)
    return EXIT_OK


def _quiet(*args, **kwargs) -> None:
    """`print` on the ranks that do not print."""


@dataclass
class _Job:
    """What `wavenet train` checks and builds before it writes anything."""

    run: RunDir
    resumed: dict | None  # the checkpoint to resume from
    cfg: TrainConfig
    input_file: Path
    words: list
    data: dict            # the data record (rundir.data_record)
    vocab: Vocab
    splits: tuple         # (train, val, test)
    model: torch.nn.Module
    batches: object       # the training batch source (batches.make_batches)


def _prepare(args, device: str, group) -> _Job:
    """Check the flags, the input file and any checkpoint; build the model and its batches."""
    run = RunDir(args.work_dir)
    resumed = run.start(resume=args.resume)
    model_cfg, cfg = _configs(args, resumed)
    if cfg.final_dropout is not None and not hasattr(model_cfg, "dropout"):
        raise WavenetError(f"final_dropout does not apply to a '{model_cfg.kind}' model (it has no dropout)",
                           param="final_dropout")
    recorded = resumed["data"]["path"] if resumed is not None else None
    input_file = Path(args.input_file or recorded or default_input())
    words = load_words(input_file, args.max_length)
    data = data_record(input_file, words, args.max_length)
    vocab = Vocab.from_words(words)
    if resumed is not None:
        if data["sha256"] != resumed["data"]["sha256"]:
            raise WavenetError(f"resume: {input_file} is not the file this run was trained on "
                               "(SHA-256 differs)", param="resume")
        if vocab != Vocab.from_dict(resumed["vocab"]):
            raise WavenetError("resume: the checkpoint's vocabulary differs from the input file's",
                               param="resume")
    if model_cfg.kind == "transformer" and data["longest"] + 1 > model_cfg.n_positions:
        raise WavenetError(f"{input_file}: its longest line has {data['longest']:,} characters, more than "
                           f"the {model_cfg.n_positions - 1:,} this transformer reads (one fewer than its "
                           f"positions): give n_positions {data['longest'] + 1} or more", param="n_positions")
    splits = split_words(words, seed=data["split_seed"])
    generator = torch.Generator().manual_seed(cfg.seed)
    model = build_model(model_cfg, len(vocab), generator).to(device)
    batches = make_batches(model, splits[0], vocab, cfg, generator, device, group)
    return _Job(run, resumed, cfg, input_file, words, data, vocab, splits, model, batches)


class _Session:
    """A run in progress: its optimizer, steps, losses and best weights, and what it does at
    each interval (val loss, metrics, checkpoint). Under torchrun every rank holds one and
    calls the collectives; rank 0 alone writes."""

    def __init__(self, job: _Job, device: str, group, announce: bool):
        self.job, self.device, self.group, self.announce = job, device, group, announce
        self.main = group is None or group.is_main
        self.optimizer = make_optimizer(job.model, job.cfg)
        self.average = WeightAverage(job.model, job.cfg.ema) if job.cfg.ema else None
        self.step, self.lossi, self.best = 0, [], None
        # the clock: training seconds (with a budget's probe) and evaluation + checkpoint seconds
        self.clock, self.budget, self._since = {"train_s": 0.0, "eval_s": 0.0}, None, 0.0
        self._fitted_at = (0, 0.0)  # (step, training seconds) where a budget last fitted its steps
        torch.manual_seed(job.cfg.seed + (0 if group is None else group.rank))  # dropout's stream, per rank
        self.ddp = None
        if group is not None:  # gradients averaged across ranks; BatchNorm syncs its own statistics
            from torch.nn.parallel import DistributedDataParallel
            self.ddp = DistributedDataParallel(job.model, forward_sync_buffers=False)
        self.val_batches = shard_batches(eval_batches(job.model, job.splits[1], job.vocab))  # built once

    def resume(self, resumed: dict) -> None:
        job = self.job
        job.model.load_state_dict(resumed["model"])
        self.optimizer.load_state_dict(resumed["optimizer"])
        if self.average is not None:
            self.average.load_state_dict(resumed["ema"])
        job.batches.load_state_dict(resumed["batches"])
        self.step, self.lossi, self.best = resumed["step"], resumed["lossi"].tolist(), resumed.get("best")
        self.clock.update(resumed.get("clock", {}))
        self.budget = resumed.get("budget")
        if self.budget is not None and self.budget["minutes"] != job.cfg.time_budget:  # extended
            self.budget = dict(self.budget, minutes=job.cfg.time_budget,
                               extended=[*self.budget.get("extended", []), [self.step, job.cfg.max_steps]])
        self._fitted_at = (self.step, self.clock["train_s"])
        _restore_rng(resumed, self.group, self.device)

    def fit_budget(self, eval_interval_given: bool, say) -> None:
        """Fix max_steps (and eval_interval) to the time budget (train.fit_to_budget)."""
        job = self.job
        fitted = fit_to_budget(job.model, job.batches, job.cfg, eval_interval_given=eval_interval_given,
                               ddp=self.ddp, average=self.average)
        job.cfg = fitted.cfg
        self.budget = dict(minutes=job.cfg.time_budget, step_s=fitted.step_s, probe_s=fitted.probe_s,
                           probe_steps=fitted.probe_steps, steps=job.cfg.max_steps)
        self.clock["train_s"] = fitted.probe_s
        self._fitted_at = (0, fitted.probe_s)
        say(f"time budget {job.cfg.time_budget:g} min: {job.cfg.max_steps:,} steps at "
            f"{fitted.step_s * 1e3:.1f} ms "
            f"(measured over {fitted.probe_steps} steps; {fitted.probe_s:.1f} s of the budget), val every "
            f"{job.cfg.eval_interval:,} steps, evaluation not counted")

    def start_clock(self) -> None:
        self._since = time.perf_counter()

    def _lap(self) -> float:
        """Seconds since the last lap (or start_clock)."""
        now = time.perf_counter()
        lap, self._since = now - self._since, now
        return lap

    def tick(self) -> None:
        """The time since the last lap was training."""
        self.clock["train_s"] += self._lap()

    def save(self, at_step: int) -> None:
        job = self.job
        rngs = distributed.gather_object(_rng_state(self.device))  # a collective: every rank's stream
        if not self.main:
            return
        state = dict(**model_state(job.model, job.vocab), optimizer=self.optimizer.state_dict(), step=at_step,
                     train_config=dataclasses.asdict(job.cfg), batches=job.batches.state_dict(),
                     lossi=torch.tensor(self.lossi, dtype=torch.float64), data=job.data, rng=rngs[0]["cpu"],
                     clock=dict(self.clock))
        if self.budget is not None:
            state["budget"] = self.budget
        if self.average is not None:
            state["ema"] = self.average.state_dict()
        if "cuda" in rngs[0]:  # dropout on a GPU draws from the GPU's stream
            state["cuda_rng"] = rngs[0]["cuda"]
        if self.group is not None:
            state["rank_rngs"] = rngs
        job.run.save(state if self.best is None else dict(state, best=self.best))

    def refit(self, at_step: int) -> TrainConfig | None:
        """A budget run: re-aim max_steps at the budget from the step rate since the last fit
        (train.refit_to_budget); rank 0's measurement for every rank. The new recipe, or None.
        Fewer than half an interval's steps since the last fit (the first evaluation after
        a resume between two) are too few to time: the fit stands until the next."""
        job = self.job
        if self.budget is None or at_step >= job.cfg.max_steps:
            return None
        step0, train_s0 = self._fitted_at
        if at_step - step0 < max(1, job.cfg.eval_interval // 2):
            return None  # too few steps since the last fit (a resume between evaluations) to time
        rate = (self.clock["train_s"] - train_s0) / (at_step - step0)
        cfg = distributed.from_main(refit_to_budget(job.cfg, at_step, self.clock["train_s"], rate))
        self._fitted_at = (at_step, self.clock["train_s"])
        if cfg == job.cfg:
            return None
        self.budget = dict(self.budget, refits=[*self.budget.get("refits", []), [at_step, cfg.max_steps]])
        job.cfg = cfg
        return cfg

    def on_interval(self, at_step: int) -> TrainConfig | None:
        """Val loss, metrics and the checkpoint; a budget run's re-fitted recipe, if it changed."""
        job = self.job
        self.tick()
        refitted = self.refit(at_step)
        live = None if self.average is None else self.average.apply_to(job.model)  # val: the average's
        val = split_loss(job.model, job.splits[1], job.vocab, self.device, batches=self.val_batches,
                         sharded=True)
        self.clock["eval_s"] += self._lap()
        if self.best is None or val < self.best["val_loss"]:  # the weights sample and eval use by default
            self.best = dict(model={k: v.detach().clone() for k, v in job.model.state_dict().items()},
                             step=at_step, val_loss=val)
        if live is not None:
            job.model.load_state_dict(live)  # training goes on from the live weights
        recent = self.lossi[-100:]  # log10 losses of the last 100 steps
        if self.main:
            job.run.append_metrics({"step": at_step, "train_loss_recent": 10 ** (sum(recent) / len(recent)),
                                    "val_loss": val, "train_s": round(self.clock["train_s"], 3),
                                    "eval_s": round(self.clock["eval_s"], 3)})
        self.save(at_step)
        self.clock["eval_s"] += self._lap()  # the checkpoint's write, and any wait for it
        if self.main and self.announce:  # no progress bar: one line per interval instead
            print(f"step {at_step:,}: val loss {val:.4f}"
                  + ("" if refitted is None else f"; the budget now fits {refitted.max_steps:,} steps"))
        return refitted


def _report(job: _Job, session: _Session, step: int, num_samples: int, say, device: str) -> None:
    """The end of a run: the loss curve, train and val loss, the best weights, samples."""
    model, vocab = job.model, job.vocab
    train_words, val_words, _ = job.splits
    if session.average is not None:  # the run's last weights are the average
        session.average.apply_to(model)
    if session.main:
        why_not = job.run.plot_loss(session.lossi)
        print(f"loss curve: {job.run.loss_plot}" if why_not is None else f"loss curve not drawn: {why_not}")
    scored = sample_for_loss(train_words, seed=job.cfg.seed)
    of = "" if len(scored) == len(train_words) else f" (a seeded sample of {len(scored):,} of " \
                                                     f"{len(train_words):,} train names)"
    say(f"train loss {split_loss(model, scored, vocab, device, sharded=True):.4f}{of}")
    say(f"val loss   {split_loss(model, val_words, vocab, device, session.val_batches, sharded=True):.4f}")
    say(f"checkpoint: {job.run.checkpoint}")
    clock, budget = session.clock, session.budget
    of = "" if budget is None else (f" of a {budget['minutes']:g} min budget, {budget['probe_s']:.1f} s "
                                    "of it measuring the step rate")
    say(f"training {clock['train_s']:.1f} s{of}; evaluation and checkpoints {clock['eval_s']:.1f} s more")
    best = session.best
    if best is not None:
        last = " (the last step's)" if best["step"] == step else ""
        say(f"best val loss {best['val_loss']:.4f} at step {best['step']:,}{last}: "
            "the weights sample and eval use")
        model.load_state_dict(best["model"])
    if num_samples and session.main:
        generator = torch.Generator().manual_seed(job.cfg.seed)
        names = _sample(model, vocab, num_samples, generator, job.data, device)
        _print_marked(names, job.splits)


def _rng_state(device: str) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _restore_rng(resumed: dict, group, device: str) -> None:
    """Each rank continues its own dropout stream from the checkpoint. A checkpoint of a
    different number of processes has none for the new ranks: they keep their fresh seed."""
    saved = resumed.get("rank_rngs")
    if group is None or group.rank == 0:
        state = {"cpu": resumed.get("rng"), "cuda": resumed.get("cuda_rng")}
    else:
        state = saved[group.rank] if saved and len(saved) == group.world_size else {}
    if state.get("cpu") is not None:
        torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and device.startswith("cuda"):
        torch.cuda.set_rng_state(state["cuda"])


def _configs(args, resumed):
    """The model and training configs: from the flags, or from the checkpoint on --resume,
    where a flag that contradicts the checkpoint is an error, not silently ignored."""
    model_given = {name: getattr(args, name) for name in MODEL_FIELDS if getattr(args, name) is not None}
    train_given = {f.name: getattr(args, f.name) for f in flag_fields(TrainConfig)
                   if getattr(args, f.name) is not None}
    if resumed is None:
        if train_given.get("time_budget") and "max_steps" in train_given:
            raise WavenetError("time_budget sets the number of steps: give it or max_steps, not both",
                               param=("time_budget", "max_steps"))
        kind = args.model or DEFAULT_KIND
        return model_config(kind, **model_given), dataclasses.replace(RECIPES[kind], **train_given)
    saved_model, _ = config_from_record(resumed["model_config"])
    saved_train = TrainConfig(**resumed["train_config"])
    model_config(saved_model.kind, **model_given)  # a flag the saved kind does not have: say so
    # a longer run: more steps, or more minutes for a budget run (train.extend_recipe)
    longer = {name: train_given.pop(name) for name in ("max_steps", "time_budget")
              if train_given.get(name) not in (None, getattr(saved_train, name))}
    if longer:
        budget = resumed.get("budget") or {}
        train_s = resumed.get("clock", {}).get("train_s", 0.0)
        saved_train = extend_recipe(saved_train, resumed["step"], train_s, budget.get("step_s"), **longer)
    saved = {"kind": saved_model.kind, **dataclasses.asdict(saved_model), **dataclasses.asdict(saved_train)}
    for name, value in {"kind": args.model, **model_given, **train_given}.items():
        if value is not None and value != saved[name]:
            raise WavenetError(f"resume: {name} {value} contradicts the checkpoint ({saved[name]})",
                               param=("resume", name))
    return saved_model, saved_train


def _sample(model, vocab, num, generator, data, device, temperature=1.0, top_k=None, prefix="") -> list[str]:
    prefix_ids = vocab.encode(prefix)
    names = generate(model, num, generator=generator, temperature=temperature, top_k=top_k, prefix=prefix_ids,
                     max_new_tokens=2 * data["longest"] + 1, device=device)
    return [vocab.decode(ids) for ids in names]


def _print_marked(names: list[str], splits) -> None:
    """Each name marked as makemore does (train, val/test, new), or '?' without the split."""
    if splits is not None:
        train_set, heldout = set(splits[0]), set(splits[1]) | set(splits[2])
    for name in names:
        print(f"{novelty(name, train_set, heldout) if splits is not None else '?':>8}  {name}")


def sample(args) -> int:
    device = resolve_device(args.device)
    model, vocab, ckpt = RunDir(args.work_dir).load_model(device, args.weights)
    generator = torch.Generator()
    generator.manual_seed(args.seed) if args.seed is not None else generator.seed()
    names = _sample(model, vocab, args.num_samples, generator, ckpt["data"], device, args.temperature,
                    args.top_k, args.prefix)
    try:
        splits = load_split(ckpt["data"], args.input_file)
    except WavenetError as e:
        print(f"wavenet: note: samples not marked train / val/test / new: {e}", flush=True)
        splits = None
    _print_marked(names, splits)
    return EXIT_OK


def evaluate(args) -> int:
    """Loss per split, and on the val and test names that do not occur in train (the data
    may repeat a name: names.txt holds 2,539 twice, so a model can score a held-out name
    it has memorised). Val and test are scored whole; train too, up to 50,000 names, and
    beyond that over the seeded sample the end of training scores (said so)."""
    wanted = eval_splits(args.splits)
    device = resolve_device(args.device)
    model, vocab, ckpt = RunDir(args.work_dir).load_model(device, args.weights)
    train_words, val_words, test_words = load_split(ckpt["data"], args.input_file)
    seen = set(train_words)
    seed = ckpt.get("train_config", {}).get("seed", TrainConfig.seed)  # train's sample, as at training's end
    scored = sample_for_loss(train_words, seed=seed)
    rows = (("train", scored), ("val", val_words), ("test", test_words),
            ("val unseen", [w for w in val_words if w not in seen]),
            ("test unseen", [w for w in test_words if w not in seen]))
    for name, words in rows:
        if name.split()[0] not in wanted:  # "val unseen" goes with val, "test unseen" with test
            continue
        if not words:
            print(f"{name:11} loss -       (no names)")
            continue
        loss, targets = split_loss(model, words, vocab, device), sum(len(w) + 1 for w in words)
        sampled = words is scored and len(scored) < len(train_words)
        of = f" of {len(train_words):,}: a seeded sample" if sampled else ""
        print(f"{name:11} loss {loss:.4f}  ({targets:,} targets, {len(words):,} names{of})")
    return EXIT_OK


def eval_splits(text: str) -> set[str]:
    """`--splits`: a comma-separated choice of train, val and test."""
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    if not wanted or not wanted <= {"train", "val", "test"}:
        raise WavenetError(f"splits must name train, val or test, comma-separated, got '{text}'",
                           param="splits")
    return wanted


def score(args) -> int:
    """One row per line of the input: its log-likelihood, nats per character and perplexity
    (scoring.py); lines the model cannot score get a message in the error column, and a note
    on stderr counts them."""
    from . import scoring
    if args.max_length < 1:
        raise WavenetError(f"max_length must be at least 1, got {args.max_length}", param="max_length")
    source = None if args.file == "-" else open_text_file(Path(args.file))
    try:
        device = resolve_device(args.device)
        model, vocab, _ = RunDir(args.work_dir).load_model(device, args.weights)
        lines = read_lines(source or sys.stdin.buffer, args.max_length)
        if args.format == "tsv":
            print("\t".join(scoring.COLUMNS))
        kept, failed = [], 0
        while chunk := list(itertools.islice(lines, scoring.CHUNK)):
            rows = scoring.score_lines(model, vocab, chunk, device)
            failed += sum(s.error is not None for _, s in rows)
            if args.sort:
                kept += rows
            else:
                print("\n".join(scoring.format_row(n, s, args.format) for n, s in rows))
        for n, s in sorted(kept, key=scoring.rank_key):
            print(scoring.format_row(n, s, args.format))
    finally:
        if source is not None:
            source.close()
    if failed:
        sys.stdout.flush()
        print(f"wavenet: note: {failed:,} line{'s' * (failed != 1)} could not be scored (see the error "
              "column)", file=sys.stderr)
    return EXIT_OK


def ensemble(args) -> int:
    """Join trained runs into one model (ensemble.py): write DIR/ensemble.json, then the val
    loss of each member and of the ensemble."""
    from .ensemble import join
    device = resolve_device(args.device)
    model, vocab, ckpt = join(args.work_dir, args.runs, device)
    val_words = load_split(ckpt["data"], args.input_file)[1]
    print(f"wrote {Path(args.work_dir) / 'ensemble.json'}: {len(model)} members ({', '.join(model.kinds)})")
    for run, member in zip(args.runs, model.members):
        print(f"{run}: val loss {split_loss(member, val_words, vocab, device):.4f}")
    print(f"ensemble val loss {split_loss(model, val_words, vocab, device):.4f} (the mean of the members' "
          "distributions)")
    return EXIT_OK


def convert(args) -> int:
    """MLP checkpoint -> conv checkpoint with the same function (ConvWaveNet.from_mlp), from
    the MLP's best weights (its last, in a checkpoint that keeps no best)."""
    src = RunDir(args.work_dir)
    ckpt = src.load(kind="mlp")
    mlp, vocab = model_from_checkpoint(ckpt)
    conv = ConvWaveNet.from_mlp(mlp)
    dst = RunDir(args.into if args.into else src.path.with_name(src.path.name + "-conv"))
    if dst.checkpoint.exists():
        raise WavenetError(f"{dst.checkpoint} exists: choose another into", param="into")
    dst.create(resume=False)
    step = ckpt["best"]["step"] if "best" in ckpt else ckpt.get("step", 0)  # the weights converted
    dst.save(dict(**model_state(conv, vocab), step=step, data=ckpt["data"],
                  converted_from=str(src.checkpoint.resolve())))
    print(f"wrote {dst.checkpoint}: conv model converted from the MLP at step {step:,} (same function)")
    return EXIT_OK


def bench(args) -> int:
    from . import bench as benchmarks
    if args.speedrun and (args.full or args.blocks or args.repeats is not None):
        raise WavenetError("--speedrun takes no --full, --blocks or --repeats: it trains the default "
                           "recipes", param="speedrun")
    cfg = benchmarks.FULL if args.full else benchmarks.QUICK
    changes = dict(device=resolve_device(args.device))
    if args.blocks:
        try:
            changes["blocks"] = tuple(int(b) for b in args.blocks.split(","))
        except ValueError:
            raise WavenetError(f"blocks must be comma-separated integers, got '{args.blocks}'",
                               param="blocks") from None
    if args.repeats is not None:
        changes["repeats"] = args.repeats
    kinds = speedrun_kinds = None
    if args.kinds is not None:
        kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
        unknown = [k for k in kinds if k not in MODEL_CONFIGS]
        if unknown or not kinds:
            raise WavenetError(f"kinds: unknown model kind '{unknown[0] if unknown else args.kinds}' "
                               f"(choose from {', '.join(MODEL_CONFIGS)})", param="kinds")
        changes["kinds"], speedrun_kinds = kinds, kinds
    cfg = dataclasses.replace(cfg, **changes)  # BenchConfig checks its fields
    names = load_words(args.input_file or default_input())
    mode = "speedrun" if args.speedrun else "full" if args.full else "quick"
    print(f"wavenet bench ({mode}): device {cfg.device}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}", flush=True)
    log = lambda line: print(line, flush=True)  # noqa: E731
    if args.speedrun:
        from . import speedrun
        results = dict(mode=mode, machine=benchmarks.machine(cfg.device),
                       speedrun=speedrun.speedrun(names, cfg.device, log=log,
                                                  kinds=speedrun_kinds or speedrun.KINDS))
        table = speedrun.markdown(results["speedrun"])
    else:
        results = benchmarks.run(names, cfg, log=log)
        table = benchmarks.markdown(results)
        if cfg.kinds:  # then every kind side by side
            from . import bench_kinds
            results["kinds"] = bench_kinds.compare(names, cfg.device, cfg.kinds, repeats=cfg.kind_repeats,
                                                   seed=cfg.seed)
            table += "\n\n" + bench_kinds.markdown(results["kinds"])
    print()
    print(table)
    for path in benchmarks.write_outputs(results, Path(args.out), Path(args.log) if args.log else None):
        print(f"wrote {path}")
    return EXIT_OK


COMMANDS = {"train": train, "sample": sample, "eval": evaluate, "score": score, "ensemble": ensemble,
            "convert": convert, "bench": bench}
