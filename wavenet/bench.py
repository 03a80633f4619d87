"""Benchmarks: the per-position MLP against the convolution, side by side, in one process.
(`wavenet bench` then runs every model kind side by side: bench_kinds.py.)

Every MLP-vs-conv figure compares the two models on the same weights (the conv is `from_mlp` of the
MLP), the same work and the same threads, timed alternately (MLP, conv, MLP, conv, ...)
after a warm-up, and reported as the median of the repeats. Beside each measured speed-up
stands the limit the layer shapes allow: the ratio of FLOPs per target position.
"""

from __future__ import annotations

import copy
import json
import platform
import random
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from .batches import NameBatches, build_windows, eval_batches
from .config import MLPConfig, TrainConfig, check_block_size
from .data import Vocab, split_words
from .errors import WavenetError
from .models import ConvWaveNet, build_model, native
from .sample import generate
from .train import make_optimizer


@dataclass(frozen=True)
class BenchConfig:
    quick: bool = True
    device: str = "cpu"
    repeats: int = 5
    blocks: tuple = (8, 16, 32, 64)
    datasets: tuple = ("names", "fullnames")
    train_positions: tuple = (32, 256, 2048)
    eval_words: int | None = 300         # items of the training split to evaluate; None: all
    sample_names: int = 100
    lecture_names: int = 10              # the one-name-at-a-time loop is slow: fewer names, per-name rate
    model: MLPConfig = MLPConfig()       # widths of both models; block_size is replaced by each of `blocks`
    seed: int = 42
    kinds: tuple = ("mlp", "conv", "wavenet", "lstm", "gru", "transformer")  # bench_kinds, after `run`
    kind_repeats: int = 3

    def __post_init__(self):
        if self.repeats < 1:
            raise WavenetError(f"repeats must be at least 1, got {self.repeats}", param="repeats")
        for block in self.blocks:
            try:
                check_block_size(block)
            except WavenetError:
                raise WavenetError(f"blocks must be powers of two >= 2, got {block}",
                                   param="blocks") from None


QUICK = BenchConfig()
FULL = BenchConfig(quick=False, eval_words=None, sample_names=1_000, lecture_names=1_000, kind_repeats=7)


# ----------------------------------------------------------------------------- data sets

def full_names(names: list[str], seed: int = 0) -> list[str]:
    """Longer lines built deterministically from the names: 2-4 names joined by spaces."""
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(names):
        k = rng.randint(2, 4)
        out.append(" ".join(names[i:i + k]))
        i += k
    return out


def datasets(names: list[str], which) -> dict[str, tuple[list[str], Vocab]]:
    train = split_words(names)[0]
    made = {"names": train, "fullnames": full_names(train)}
    return {k: (made[k], Vocab.from_words(made[k])) for k in which}


# ----------------------------------------------------------------------------- the limit

def flops_per_target(model) -> int:
    """Multiply-adds x 2 of the matrix products for one target position, from the layer
    shapes. The MLP recomputes its whole tree per window; the conv computes one position
    per layer per target (the boundary prefix skipped; padding not counted)."""
    head = 2 * model.head.in_features * model.head.out_features
    total = head
    for level, layer in enumerate(model.fuse):
        if isinstance(layer, torch.nn.Linear):
            positions = model.block_size >> (level + 1)
            total += positions * 2 * layer.in_features * layer.out_features
        else:
            total += 2 * (2 * layer.in_channels) * layer.out_channels
    return total


# ----------------------------------------------------------------------------- timing

def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def race(fns: dict, repeats: int, device) -> dict[str, float]:
    """Median seconds of each callable, run alternately after one warm-up round each."""
    times = {k: [] for k in fns}
    for r in range(repeats + 1):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if r > 0:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def saved_bytes(step) -> int:
    """Bytes of the tensors autograd saves for the backward pass during `step()` (the
    activation memory of a training step, which is what grows with batch and context);
    each storage counted once."""
    seen = {}

    def pack(t):
        try:
            key = t.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except RuntimeError:
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


# ----------------------------------------------------------------------------- the sections

def pair(vocab: Vocab, block: int, cfg: BenchConfig):
    config = replace(cfg.model, block_size=block)
    mlp = build_model(config, len(vocab), generator=torch.Generator().manual_seed(cfg.seed)).to(cfg.device)
    return mlp, ConvWaveNet.from_mlp(mlp)


@torch.no_grad()
def bench_eval(mlp, conv, words, vocab, cfg) -> dict:
    mlp.eval(), conv.eval()
    windows = [(x.to(cfg.device), y) for x, y in eval_batches(mlp, words, vocab)]
    names = [(x.to(cfg.device), y) for x, y in eval_batches(conv, words, vocab)]
    targets = sum(len(w) + 1 for w in words)
    t = race({"mlp": lambda: [mlp(x) for x, _ in windows], "conv": lambda: [conv(x) for x, _ in names]},
             cfg.repeats, cfg.device)
    return dict(targets=targets, mlp_s=t["mlp"], conv_s=t["conv"], speedup=t["mlp"] / t["conv"])


def gemm(rows: int, inner: int, cols: int, device, dtype=torch.float32):
    """A matrix product (rows, inner) @ (inner, cols) and its FLOPs: the machine's own rate
    for the shapes a training step multiplies, timed in the same race as the models."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(rows, inner, generator=g).to(device, dtype)
    b = torch.randn(inner, cols, generator=g).to(device, dtype)
    out = torch.empty(rows, cols, device=device, dtype=dtype)
    return (lambda: torch.mm(a, b, out=out)), 2 * rows * inner * cols


CALM = 0.9     # a training race counts when both probes run at >= 90% of their best rate in the run
RACES = 3      # at most this many races per training figure; the calmest is reported


def small_ops(device, count: int = 100):
    """`count` small elementwise operators on a (256, 128) tensor, and that count: a probe of
    the per-operator cost that a busy machine inflates (each one waits for every thread)."""
    x, g = torch.randn(256, 128, device=device), torch.randn(128, device=device)
    return (lambda: [torch.addcmul(g, x, g) for _ in range(count)]), count


def bench_train(mlp, conv, words, vocab, positions, cfg, calm: dict | None = None) -> dict:
    """fwd + bwd + SGD step at about `positions` target positions per step, on copies (the
    steps change the weights; the other sections keep the shared ones). Three contestants:
    the MLP on random windows (the lecture's arithmetic), the conv's training step (packed
    names, fused; what `wavenet train` runs) and the conv's reference path (autograd on
    `pad_names` rows). Batches are built before the clock starts, for all three; building
    a packed batch is timed on its own. Beside them, in the same race, a matrix product of
    the step's largest shape (2,048 x 2H x H) gives this machine's rate: achieved GFLOP/s
    count 3 x the forward matrix-product FLOPs (forward, and two products per weight in the
    backward pass) per target.

    These machines are shared: a neighbour's load slows the many small operators of a step
    more than one large matrix product. So two probes run in every race, the matrix product
    and `small_ops`; `calm` holds the best rate of each seen in this run, and a race where
    either probe runs below CALM of its best is run again, up to RACES times; the calmest
    race (by its probes only, never by the models' times) is reported, with its score."""
    calm = {} if calm is None else calm
    mlp, conv = copy.deepcopy(mlp).train(), copy.deepcopy(conv).train()
    ref = copy.deepcopy(conv)
    X, Y = build_windows(words, vocab, mlp.block_size)
    g = torch.Generator().manual_seed(0)
    ix = torch.randint(0, len(X), (positions,), generator=g)
    xb, yb = X[ix].to(cfg.device), Y[ix].to(cfg.device)
    per_name = sum(len(w) + 1 for w in words) / len(words)
    batch_names = max(2, round(positions / per_name))
    source = NameBatches(words, vocab, conv.block_size, batch_names, seed=0)
    packed, _ = source.next()
    packed = packed.to(cfg.device)
    xn, yn = NameBatches(words, vocab, conv.block_size, batch_names, seed=0, packed=False).next()
    xn, yn = xn.to(cfg.device), yn.to(cfg.device)
    conv_targets = packed.n_targets
    opts = {m: make_optimizer(m, TrainConfig(learning_rate=1e-4)) for m in (mlp, conv, ref)}

    def step(model, *batch):
        _, loss = model(*batch)
        opts[model].zero_grad(set_to_none=True)
        loss.backward()
        opts[model].step()

    H = cfg.model.n_hidden
    product, product_flops = gemm(2048, 2 * H, H, cfg.device)
    steps = 3 if positions >= 1024 else 10
    reps = max(1, round(3 * positions * flops_per_target(mlp) / product_flops))  # about an MLP step's work
    probe, probe_ops = small_ops(cfg.device)
    races = []
    while len(races) < RACES:
        t = race({"mlp": lambda: [step(mlp, xb, yb) for _ in range(steps)],
                  "conv": lambda: [step(conv, packed) for _ in range(steps)],
                  "conv_ref": lambda: [step(ref, xn, yn) for _ in range(steps)],
                  "batch": lambda: [source.next() for _ in range(steps)],
                  "gemm": lambda: [product() for _ in range(steps * reps)],
                  "small": probe}, cfg.repeats, cfg.device)
        rates = {"gemm": steps * reps * product_flops / t["gemm"] / 1e9, "small": probe_ops / t["small"]}
        for k, v in rates.items():
            calm[k] = max(calm.get(k, 0.0), v)
        races.append((min(rates[k] / calm[k] for k in rates), t, rates))
        if races[-1][0] >= CALM:
            break
    score, t, rates = max(races, key=lambda r: r[0])
    gemm_gflops = rates["gemm"]
    out = dict(positions=positions, conv_names=batch_names, conv_targets=conv_targets,
               ref_padding=1 - conv_targets / yn.numel(), gemm_gflops=gemm_gflops,
               small_ops_per_s=rates["small"], races=len(races), calm=score,
               batch_ms=t["batch"] / steps * 1e3)
    for name, model, n, batch in (("mlp", mlp, positions, (xb, yb)), ("conv", conv, conv_targets, (packed,)),
                                  ("conv_ref", ref, conv_targets, (xn, yn))):
        rate = steps * n / t[name]
        out[f"{name}_pos_per_s"] = rate
        out[f"{name}_ms_per_step"] = t[name] / steps * 1e3
        out[f"{name}_gflops"] = 3 * flops_per_target(model) * rate / 1e9
        out[f"{name}_fraction"] = out[f"{name}_gflops"] / gemm_gflops
        saved = saved_bytes(lambda model=model, batch=batch: model(*batch)[1].backward())
        out[f"{name}_bytes_per_pos"] = saved / n
    out["speedup"] = out["conv_pos_per_s"] / out["mlp_pos_per_s"]
    out["ref_speedup"] = out["conv_ref_pos_per_s"] / out["mlp_pos_per_s"]
    return out


@torch.no_grad()
def lecture_loop(mlp, num: int, max_new: int, generator) -> list[list[int]]:
    """The lecture's sampler: one name at a time, the MLP on a Python list window."""
    out = []
    for _ in range(num):
        context, name = [0] * mlp.block_size, []
        for _ in range(max_new):
            logits, _ = mlp(torch.tensor([context], device=mlp.head.weight.device))
            ix = torch.multinomial(torch.softmax(logits, dim=1).cpu(), 1, generator=generator).item()
            if ix == 0:
                break
            context = context[1:] + [ix]
            name.append(ix)
        out.append(name)
    return out


def bench_sample(mlp, conv, words, cfg) -> dict:
    mlp.eval(), conv.eval()
    max_new = max(map(len, words)) + 1
    n, n_lecture = cfg.sample_names, cfg.lecture_names

    def batched(model, method):
        return lambda: generate(model, n, generator=torch.Generator().manual_seed(1), method=method,
                                max_new_tokens=max_new, device=cfg.device)

    fns = {"lecture": lambda: lecture_loop(mlp, n_lecture, max_new, torch.Generator().manual_seed(1)),
           "mlp_batched": batched(mlp, "window"), "conv_full": batched(conv, "full"),
           "conv_cached": batched(conv, "cached")}
    t = race(fns, cfg.repeats, cfg.device)
    rates = {k: (n_lecture if k == "lecture" else n) / v for k, v in t.items()}
    same = batched(conv, "cached")() == batched(conv, "full")() == batched(mlp, "window")()
    return dict(names=n, lecture_names=n_lecture, max_new_tokens=max_new, identical_names=same,
                **{f"{k}_names_per_s": v for k, v in rates.items()},
                cached_vs_lecture=rates["conv_cached"] / rates["lecture"],
                cached_vs_mlp_batched=rates["conv_cached"] / rates["mlp_batched"],
                cached_vs_full=rates["conv_cached"] / rates["conv_full"])


def run(names: list[str], cfg: BenchConfig, log=print) -> dict:
    results = dict(mode="quick" if cfg.quick else "full", config=asdict(cfg), machine=machine(cfg.device),
                   rows=[])
    calm = {}  # the best probe rates seen in this run (bench_train)
    for dname, (words, vocab) in datasets(names, cfg.datasets).items():
        eval_words = words if cfg.eval_words is None else words[:cfg.eval_words]
        for block in cfg.blocks:
            mlp, conv = pair(vocab, block, cfg)
            row = dict(dataset=dname, block=block, mlp_flops=flops_per_target(mlp),
                       conv_flops=flops_per_target(conv))
            row["flop_ratio"] = row["mlp_flops"] / row["conv_flops"]
            row["eval"] = bench_eval(mlp, conv, eval_words, vocab, cfg)
            log(f"{dname} block {block}: eval speed-up {row['eval']['speedup']:.2f}x "
                f"(FLOP ratio {row['flop_ratio']:.2f})")
            row["train"] = [bench_train(mlp, conv, words, vocab, p, cfg, calm) for p in cfg.train_positions]
            log(f"{dname} block {block}: train speed-up "
                + ", ".join(f"{r['speedup']:.2f}x @{r['positions']}" for r in row["train"]))
            row["sample"] = bench_sample(mlp, conv, words, cfg)
            log(f"{dname} block {block}: cached sampling "
                f"{row['sample']['cached_vs_lecture']:.1f}x the lecture loop")
            results["rows"].append(row)
    return results


# ----------------------------------------------------------------------------- reporting

def machine(device: str) -> dict:
    cpu = native.cpuinfo().get("model name") or platform.processor() or platform.machine()
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--untracked-files=no", "--", "."):
        commit += "-dirty"  # the measured code (this package) differs from the commit
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    conv_norm = native.status() if device == "cpu" else "torch operators (CUDA)"  # the conv step's BatchNorm
    return dict(date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), cpu=cpu, gpu=gpu,
                threads=torch.get_num_threads(), torch=torch.__version__, commit=commit, device=device,
                conv_norm=conv_norm)


def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent,
                              timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def markdown(results: dict) -> str:
    rows = results["rows"]
    lines = ["| data | block | FLOP ratio | eval speed-up | " +
             " | ".join(f"train speed-up @{p}" for p in results["config"]["train_positions"]) +
             " | MLP / conv bytes per pos (train @256) |",
             "|---|---:|---:|---:|" + "---:|" * len(results["config"]["train_positions"]) + "---:|"]
    for r in rows:
        t256 = next((t for t in r["train"] if t["positions"] == 256), r["train"][0])
        lines.append(f"| {r['dataset']} | {r['block']} | {r['flop_ratio']:.2f}x | "
                     f"{r['eval']['speedup']:.2f}x | "
                     + " | ".join(f"{t['speedup']:.2f}x" for t in r["train"])
                     + f" | {t256['mlp_bytes_per_pos']:,.0f} / {t256['conv_bytes_per_pos']:,.0f} |")
    lines += ["", "| data | block | targets / step | machine GEMM | MLP | conv | conv / MLP (FLOP ratio) "
              "| conv reference path / MLP | packing a batch |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        for t in r["train"]:
            lines.append(f"| {r['dataset']} | {r['block']} | {t['positions']:,} | "
                         f"{t['gemm_gflops']:.0f} GFLOP/s | "
                         f"{t['mlp_gflops']:.1f} ({t['mlp_fraction']:.0%}) | "
                         f"{t['conv_gflops']:.1f} ({t['conv_fraction']:.0%}) | "
                         f"{t['speedup']:.2f}x{'' if t['calm'] >= CALM else ' busy'} "
                         f"({r['flop_ratio']:.2f}x) | "
                         f"{t['ref_speedup']:.2f}x | "
                         f"{t['batch_ms']:.2f} ms |")
    lines += ["", "Training: GFLOP/s achieved (fraction of the machine's matrix-product rate, measured in "
              "the same race at 2,048 x 2H x H), counting 3 x the forward matrix-product FLOPs per target "
              "(the conv's full products: where a layer takes row 0's older tap once, `layer_way`, the "
              "step does less than it is credited with). conv = the packed, fused step `wavenet train` "
              f"runs (its BatchNorm by {results['machine'].get('conv_norm', 'torch operators')}); "
              "reference path = autograd on "
              "`pad_names` rows. MLP targets per step = positions; the conv's differ a little "
              "(whole names). Each figure is from the calmest of up to "
              f"{RACES} races, judged by the probes alone (the matrix product and 100 small operators, "
              f"each against its best rate in this run; a race at >= {CALM:.0%} of both ends the "
              f"search): {sum(t['races'] > 1 for r in rows for t in r['train'])} of "
              f"{sum(len(r['train']) for r in rows)} figures needed more than one race, "
              f"{sum(t['calm'] < CALM for r in rows for t in r['train'])} never got a calm one "
              "(marked busy)."]
    lines += ["", "| data | block | lecture loop | MLP batched | conv full | conv cached | cached / lecture "
              "| cached / MLP batched | cached / full | identical names |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        s = r["sample"]
        lines.append(f"| {r['dataset']} | {r['block']} | {s['lecture_names_per_s']:,.0f} | "
                     f"{s['mlp_batched_names_per_s']:,.0f} | {s['conv_full_names_per_s']:,.0f} | "
                     f"{s['conv_cached_names_per_s']:,.0f} | {s['cached_vs_lecture']:.1f}x | "
                     f"{s['cached_vs_mlp_batched']:.2f}x | {s['cached_vs_full']:.2f}x | "
                     f"{'yes' if s['identical_names'] else 'NO'} |")
    lines += ["", "Sampling in names per second. Eval: " +
              ("every target of the training split" if results["config"]["eval_words"] is None else
               f"the first {results['config']['eval_words']:,} items of the training split") + ", per model. "
              f"Median of {results['config']['repeats']} alternating repeats after a warm-up."]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> bool:
    try:  # a Figure of its own, not pyplot: the caller's backend and figures stay as they were
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for i, dname in enumerate(results["config"]["datasets"]):
        rows = [r for r in results["rows"] if r["dataset"] == dname]
        blocks = [r["block"] for r in rows]
        style = "-" if i == 0 else "--"
        ax.plot(blocks, [r["flop_ratio"] for r in rows], "k" + style, label=f"FLOP ratio ({dname})")
        ax.plot(blocks, [r["eval"]["speedup"] for r in rows], "o" + style, label=f"eval ({dname})")
        ax.plot(blocks, [r["train"][-1]["speedup"] for r in rows], "s" + style,
                label=f"train @{rows[0]['train'][-1]['positions']} ({dname})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(results["config"]["blocks"], [str(b) for b in results["config"]["blocks"]])
    ax.set_xlabel("context (block size)")
    ax.set_ylabel("conv speed-up over the MLP")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return True


def log_line(results: dict) -> str:
    m = results["machine"]
    if results["mode"] == "speedrun":
        r = results["speedrun"]

        def when(run, target):
            hit = run.get("reached_at", {}).get(str(target)) if target != r["target"] else run["reached"]
            return f"{hit['seconds']:.0f} s" if hit else "-"
        key = "; ".join(f"{kind} " + " / ".join(when(run, t) for t in r.get("targets", [r["target"]]))
                        + f" (final {run['final_val']:.4f})" for kind, run in r["runs"].items())
        key = (f"time to val <= {' / '.join(map(str, r.get('targets', [r['target']])))}: {key}"
               + (f"; MLP / conv at {r['target']}: {r['ratio']:.1f}x" if r["ratio"] else ""))
    else:
        def train(r):  # the speed-up at every measured step size, each marked busy where its race was
            ratios = " / ".join(f"{t['speedup']:.2f}x" + ("" if t["calm"] >= CALM else " busy")
                                for t in r["train"])
            at = " / ".join(f"{t['positions']:,}" for t in r["train"])
            last = r["train"][-1]
            return (f"train {ratios} @{at} (flop {r['flop_ratio']:.2f}x; the conv at "
                    f"{last['conv_fraction']:.0%} of GEMM @{last['positions']:,})")
        key = "; ".join(f"{r['dataset']}/{r['block']}: eval {r['eval']['speedup']:.2f}x {train(r)} "
                        f"cached {r['sample']['cached_vs_lecture']:.0f}x" for r in results["rows"])
        if results.get("kinds"):
            key += "; training targets/s: " + ", ".join(
                f"{k} {r['train_targets_per_s']:,.0f} ({r['train_fraction']:.0%})"
                for k, r in results["kinds"]["kinds"].items())
    return (f"| {m['date']} | {results['mode']} | {m['device']} | {m['gpu'] or m['cpu']} | {m['threads']} | "
            f"{m['torch']} | {m['commit']} | {key} |")


def write_outputs(results: dict, out_dir: Path, perf_log: Path | None = None) -> list[Path]:
    """bench.json holds the latest run of each kind: a speedrun replaces only its own section
    (stamped with its machine and commit), a benchmark run keeps an earlier speedrun's.
    `perf_log`: a markdown table to append this run's line to (created if missing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bench.json"
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        earlier = {}
    if results["mode"] == "speedrun":
        merged = {**earlier, "speedrun": {**results["speedrun"], "machine": results["machine"]}}
    else:
        merged = {**results, **({"speedrun": earlier["speedrun"]} if "speedrun" in earlier else {})}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=1))
    tmp.replace(path)
    written = [path]
    if results["mode"] != "speedrun" and plot(results, out_dir / "speedup.png"):
        written.append(out_dir / "speedup.png")
    if perf_log is None:
        return written
    if not perf_log.exists():
        perf_log.write_text("# Performance log\n\nOne row per `wavenet bench` run (quick, full or "
                            "speedrun).\n\n"
                            "| date | mode | device | processor | threads | torch | commit | key ratios |\n"
                            "|---|---|---|---|---:|---|---|---|\n")
    with open(perf_log, "a") as f:
        f.write(log_line(results) + "\n")
    written.append(perf_log)
    return written
