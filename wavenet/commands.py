"""What each CLI command does, on top of the library (data, models, train, sample, ...)."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
from pathlib import Path

import torch

from . import checkpoint as ckpt_io
from .cli import EXIT_INTERRUPTED
from .data import Vocab, build_windows, load_words, split_words
from .errors import WavenetError
from .evaluate import eval_batches, split_loss
from .models import ConvWaveNet, build_model, check_block_size
from .sample import check_sampling, generate, novelty
from .train import (RECIPES, Diverged, NameBatches, TrainConfig, WindowBatches, append_metrics, plot_loss,
                    train_loop, truncate_metrics)

SPLIT_SEED = 42
MODEL_DEFAULTS = dict(model="conv", block_size=8, n_embd=24, n_hidden=128)
REPO_DATA = Path(__file__).resolve().parent.parent / "data" / "names.txt"


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise WavenetError("--device cuda: no CUDA device is available (this torch build or machine has none)")
    return name


def default_input() -> Path:
    for candidate in (Path("data/names.txt"), REPO_DATA):
        if candidate.is_file():
            return candidate
    raise WavenetError("no input file: pass -i/--input-file (data/names.txt is not here)")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare_work_dir(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise WavenetError(f"-o/--work-dir {path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WavenetError(f"-o/--work-dir {path}: cannot create it ({e.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise WavenetError(f"-o/--work-dir {path}: not writable")
    return path


def lock_work_dir(path: Path):
    """Hold an exclusive lock on the run directory for the life of the process, so that a
    second `wavenet train` into it refuses instead of overwriting the first one's files."""
    f = open(path / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise WavenetError(f"-o/--work-dir {path}: another wavenet process is training there") from None
    return f


def load_split(data_info: dict):
    """Words, split as at training time, from the checkpoint's record of its data file."""
    path = Path(data_info["path"])
    words = load_words(path, data_info.get("max_length"))
    if file_sha256(path) != data_info["sha256"]:
        raise WavenetError(f"{path}: changed since training (SHA-256 differs)")
    return split_words(words, seed=data_info["split_seed"])


def train(args) -> int:
    if args.max_length < 1:
        raise WavenetError(f"--max-length must be at least 1, got {args.max_length}")
    if args.num_samples < 0:
        raise WavenetError(f"-n/--num-samples must be 0 or more, got {args.num_samples}")
    device = resolve_device(args.device)
    work = Path(args.work_dir)
    if work.exists() and not work.is_dir():
        raise WavenetError(f"-o/--work-dir {work}: exists and is not a directory")
    ckpt_path = work / ckpt_io.CHECKPOINT_NAME
    metrics_path = work / "metrics.jsonl"
    resumed = _resumable(ckpt_path) if args.resume else _refuse_existing(ckpt_path)
    # Everything the user gave is checked before anything is written.
    model_cfg, cfg, input_file = _configs(args, resumed)
    words = load_words(input_file, args.max_length)
    data_info = dict(path=str(Path(input_file).resolve()), sha256=file_sha256(Path(input_file)),
                     split_seed=SPLIT_SEED, max_length=args.max_length, longest=max(map(len, words)))
    if resumed is not None and data_info["sha256"] != resumed["data"]["sha256"]:
        raise WavenetError(f"--resume: {input_file} is not the file this run was trained on (SHA-256 differs)")
    vocab = Vocab.from_words(words)
    if resumed is not None and vocab != Vocab.from_dict(resumed["vocab"]):
        raise WavenetError("--resume: the checkpoint's vocabulary differs from the input file's")
    splits = split_words(words, seed=SPLIT_SEED)
    train_words, val_words, _ = splits
    prepare_work_dir(work)
    lock = lock_work_dir(work)  # noqa: F841  (held until the process exits)
    if resumed is None:
        _refuse_existing(ckpt_path)  # another run may have finished there meanwhile
    for stale in work.glob(ckpt_io.CHECKPOINT_NAME + ".*.tmp"):  # left by a process killed mid-write
        stale.unlink()

    generator = torch.Generator().manual_seed(cfg.seed)
    model = build_model({**model_cfg, "vocab_size": len(vocab)}, generator=generator).to(device)
    batches = _batches(model, train_words, vocab, cfg, generator, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate)
    step, lossi = 0, []
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        batches.load_state_dict(resumed["batches"])
        step, lossi = resumed["step"], resumed["lossi"].tolist()
        truncate_metrics(metrics_path, step)
        print(f"resuming {work} at step {step:,}")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{model.kind} model, {n_params:,} parameters; {len(words):,} items, vocabulary {len(vocab)}; "
          f"{len(train_words):,} train / {len(val_words):,} val names; device {device}")

    def save(at_step: int) -> None:
        state = dict(model_config=model.config, model=model.state_dict(), vocab=vocab.to_dict(),
                     optimizer=optimizer.state_dict(), step=at_step, train_config=dataclasses.asdict(cfg),
                     batches=batches.state_dict(), lossi=torch.tensor(lossi, dtype=torch.float64),
                     data=data_info)
        try:
            ckpt_io.save_checkpoint(ckpt_path, state)
        except OSError as e:
            raise WavenetError(f"could not write {ckpt_path} ({e.strerror}); "
                               "the previous checkpoint is intact") from None

    val_batches = list(eval_batches(model, val_words, vocab))  # built once, scored every interval

    def on_interval(at_step: int) -> None:
        val = split_loss(model, val_words, vocab, device, batches=val_batches)
        recent = lossi[-100:]  # log10 losses of the last 100 steps
        append_metrics(metrics_path, {"step": at_step, "train_loss_recent": 10 ** (sum(recent) / len(recent)),
                                      "val_loss": val})
        save(at_step)
        if args.no_progress:
            print(f"step {at_step:,}: val loss {val:.4f}")

    try:
        result = train_loop(model, optimizer, batches, cfg, start_step=step, lossi=lossi,
                            on_interval=on_interval, progress=not args.no_progress)
    except Diverged as e:
        kept = (f"the last good checkpoint is kept: {ckpt_path} (step {ckpt_io.load_checkpoint(ckpt_path)['step']:,})"
                if ckpt_path.exists() else "no checkpoint was written")
        raise Diverged(f"{e}; {kept}") from None
    if result.interrupted:
        save(result.step)
        print(f"interrupted at step {result.step:,}: checkpoint saved to {ckpt_path}; "
              f"continue with: wavenet train -o {work} --resume")
        return EXIT_INTERRUPTED
    if plot_loss(lossi, work / "loss.png"):
        print(f"loss curve: {work / 'loss.png'}")
    tr, va = split_loss(model, train_words, vocab, device), split_loss(model, val_words, vocab, device, val_batches)
    print(f"train loss {tr:.4f}")
    print(f"val loss   {va:.4f}")
    print(f"checkpoint: {ckpt_path}")
    if args.num_samples:
        _print_samples(model, vocab, args.num_samples, torch.Generator().manual_seed(cfg.seed), splits,
                       data_info["longest"], device)
    return 0


def _resumable(ckpt_path: Path) -> dict:
    if not ckpt_path.exists():
        raise WavenetError(f"--resume: no checkpoint in {ckpt_path.parent}")
    resumed = ckpt_io.load_checkpoint(ckpt_path)
    if "optimizer" not in resumed:
        raise WavenetError(f"--resume: {ckpt_path} holds no training state (a converted model); "
                           "train a new run instead")
    return resumed


def _refuse_existing(ckpt_path: Path) -> None:
    if ckpt_path.exists():
        raise WavenetError(f"{ckpt_path} exists: pass --resume to continue it, or choose another -o/--work-dir")


def _configs(args, resumed):
    """The model and training configs: from the flags, or from the checkpoint on --resume
    (where a flag that contradicts the checkpoint is an error, not silently ignored)."""
    flags = dict(model=args.model, block_size=args.block_size, n_embd=args.n_embd, n_hidden=args.n_hidden)
    train_flags = dict(max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                       decay_at=args.decay_at,
                       eval_interval=args.eval_interval, seed=args.seed, group_by_length=args.group_by_length)
    if resumed is None:
        model_cfg = {k: v if v is not None else MODEL_DEFAULTS[k] for k, v in flags.items()}
        model_cfg["kind"] = model_cfg.pop("model")
        cfg = dataclasses.replace(RECIPES[model_cfg["kind"]], **{k: v for k, v in train_flags.items() if v is not None})
        _check_train_config(cfg, model_cfg)
        return model_cfg, cfg, args.input_file or default_input()
    saved_model = dict(resumed["model_config"])
    saved_model["model"] = saved_model.pop("kind")
    saved_train = resumed["train_config"]
    for name, value in list(flags.items()) + list(train_flags.items()):
        saved = saved_model.get(name, saved_train.get(name))
        if value is not None and value != saved:
            raise WavenetError(f"--resume: --{name.replace('_', '-')} {value} contradicts the checkpoint ({saved})")
    model_cfg = {k: v for k, v in resumed["model_config"].items() if k != "vocab_size"}
    return model_cfg, TrainConfig(**saved_train), args.input_file or resumed["data"]["path"]


def _check_train_config(cfg: TrainConfig, model_cfg: dict) -> None:
    for flag, value in (("max-steps", cfg.max_steps), ("eval-interval", cfg.eval_interval),
                        ("n-embd", model_cfg["n_embd"]), ("n-hidden", model_cfg["n_hidden"])):
        if value < 1:
            raise WavenetError(f"--{flag} must be at least 1, got {value}")
    if cfg.batch_size < 2:
        raise WavenetError(f"--batch-size must be at least 2 (BatchNorm needs a batch), got {cfg.batch_size}")
    if not 0 < cfg.learning_rate < float("inf"):
        raise WavenetError(f"--learning-rate must be a positive number, got {cfg.learning_rate}")
    if not 0 <= cfg.decay_at <= 1:
        raise WavenetError(f"--decay-at must be a fraction between 0 and 1, got {cfg.decay_at}")
    if cfg.group_by_length < 0:
        raise WavenetError(f"--group-by-length must be 0 or more, got {cfg.group_by_length}")
    check_block_size(model_cfg["block_size"])


def _batches(model, train_words, vocab, cfg, generator, device):
    if model.kind == "conv":
        return NameBatches(train_words, vocab, model.block_size, cfg.batch_size, cfg.seed, device,
                           group_by_length=cfg.group_by_length)
    X, Y = build_windows(train_words, vocab, model.block_size)
    return WindowBatches(X, Y, cfg.batch_size, generator, device)


def _print_samples(model, vocab, num, generator, splits, longest, device, temperature=1.0, top_k=None, prefix=""):
    prefix_ids = vocab.encode(prefix)
    names = generate(model, num, generator=generator, temperature=temperature, top_k=top_k, prefix=prefix_ids,
                     max_new_tokens=2 * longest + 1, device=device)
    if splits is not None:
        train_set, heldout = set(splits[0]), set(splits[1]) | set(splits[2])
    for ids in names:
        name = vocab.decode(ids)
        tag = novelty(name, train_set, heldout) if splits is not None else "?"
        print(f"{tag:>8}  {name}")


def _load_run(args):
    device = resolve_device(args.device)
    ckpt = ckpt_io.load_checkpoint(Path(args.work_dir))
    model, vocab = ckpt_io.model_from_checkpoint(ckpt, device)
    return ckpt, model, vocab, device


def sample(args) -> int:
    ckpt, model, vocab, device = _load_run(args)
    check_sampling(len(vocab), args.num_samples, args.temperature, args.top_k)
    vocab.encode(args.prefix)  # unknown prefix characters: a clear error before any work
    try:
        splits = load_split(ckpt["data"])
    except WavenetError as e:
        print(f"wavenet: note: samples not marked train / val/test / new: {e}", flush=True)
        splits = None
    generator = torch.Generator()
    generator.manual_seed(args.seed) if args.seed is not None else generator.seed()
    _print_samples(model, vocab, args.num_samples, generator, splits, ckpt["data"]["longest"], device,
                   args.temperature, args.top_k, args.prefix)
    return 0


def convert(args) -> int:
    """MLP checkpoint -> conv checkpoint with the same function (ConvWaveNet.from_mlp)."""
    src = Path(args.work_dir)
    ckpt = ckpt_io.load_checkpoint(src, kind="mlp")
    mlp, vocab = ckpt_io.model_from_checkpoint(ckpt)
    conv = ConvWaveNet.from_mlp(mlp)
    dst = prepare_work_dir(Path(args.into) if args.into else src.with_name(src.name + "-conv"))
    target = dst / ckpt_io.CHECKPOINT_NAME
    if target.exists():
        raise WavenetError(f"{target} exists: choose another --into")
    state = dict(model_config=conv.config, model=conv.state_dict(), vocab=vocab.to_dict(), step=ckpt.get("step", 0),
                 data=ckpt["data"], converted_from=str(src.resolve() / ckpt_io.CHECKPOINT_NAME))
    ckpt_io.save_checkpoint(target, state)
    print(f"wrote {target}: conv model converted from the MLP at step {state['step']:,} (same function)")
    return 0


def eval(args) -> int:  # noqa: A001  (the command is called eval)
    ckpt, model, vocab, device = _load_run(args)
    for name, words in zip(("train", "val", "test"), load_split(ckpt["data"])):
        loss, targets = split_loss(model, words, vocab, device), sum(len(w) + 1 for w in words)
        print(f"{name:5} loss {loss:.4f}  ({targets:,} targets)")
    return 0


def bench(args) -> int:
    from . import bench as B
    cfg = B.FULL if args.full else B.QUICK
    changes = dict(device=resolve_device(args.device))
    if args.blocks:
        try:
            changes["blocks"] = tuple(int(b) for b in args.blocks.split(","))
        except ValueError:
            raise WavenetError(f"--blocks must be comma-separated integers, got '{args.blocks}'") from None
        for block in changes["blocks"]:
            check_block_size(block)
    if args.repeats is not None:
        if args.repeats < 1:
            raise WavenetError(f"--repeats must be at least 1, got {args.repeats}")
        changes["repeats"] = args.repeats
    cfg = dataclasses.replace(cfg, **changes)
    names = load_words(args.input_file or default_input())
    print(f"wavenet bench ({'full' if args.full else 'quick'}): device {cfg.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
    results = B.run(names, cfg, log=lambda line: print(line, flush=True))
    print()
    print(B.markdown(results))
    for path in B.write_outputs(results, Path(args.out), Path(args.log)):
        print(f"wrote {path}")
    return 0
