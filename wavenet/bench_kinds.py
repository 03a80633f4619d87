"""Every model kind side by side: training, evaluation, memory and cached sampling, in one race.

Each kind runs at its default shape (config.py) and trains the way `wavenet train` trains it:
its recipe's batch (`config.RECIPES`: 32 windows for the MLP, 64 whole names for the others),
its optimizer, clipping and dropout, its training path (windows; packed names; padded
names). The figures, all on the lecture's names and the same threads, timed alternately
(kind after kind, after a warm-up round) with a matrix product beside them for the
machine's rate:

- training: real targets per second, and GFLOP/s as a fraction of the machine's rate
  (3 x the forward matrix-product FLOPs per real target: `forward_flops`);
- evaluation: targets per second of `split_loss` over the val split;
- memory: bytes autograd saves for the backward pass of one training step, per target;
- sampling: names per second, generated 200 at a time with the kind's cache (the MLP: its
  window).

Beside the WaveNet's hand-written step (what `wavenet train` runs) races the same model's
step with autograd through the blocks ("wavenet, autograd step"): the step's gain, measured
in the same race.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .batches import eval_batches, make_batches
from .bench import flops_per_target as tree_flops
from .bench import gemm, race, saved_bytes
from .config import RECIPES, model_config
from .data import Vocab, split_words
from .evaluate import split_loss
from .models import build_model
from .sample import generate
from .train import make_optimizer


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(1)


KINDS = ("mlp", "conv", "wavenet", "lstm", "gru", "transformer")
AUTOGRAD = "wavenet, autograd step"  # the WaveNet's reference step, raced beside its own


def forward_flops(model) -> int:
    """Forward matrix-product FLOPs (2 x multiply-adds) per target position, from the layer
    shapes: the work a position needs, so padding and any recomputation show up as a lower
    fraction of the machine's rate. The Transformer's attention scores (4 x n_embd x the
    positions attended, at most 16 on names) are left out: under 2% of its dense work."""
    kind = model.kind
    if kind in ("mlp", "conv"):
        return tree_flops(model)
    if kind == "wavenet":
        total = 0
        for block in model.blocks:
            total += 2 * block.conv.in_channels * 2 * block.conv.out_channels  # [older | newer] -> 2C
            total += 2 * block.proj.in_features * block.proj.out_features
        if model.hidden is not None:
            total += 2 * model.hidden.in_features * model.hidden.out_features
        return total + 2 * model.head.in_features * model.head.out_features
    if kind in ("lstm", "gru"):
        total = sum(2 * layer.weight_ih_l0.numel() + 2 * layer.weight_hh_l0.numel() for layer in model.layers)
        return total + 2 * model.head.weight.numel()
    if kind == "transformer":
        block = model.blocks[0]
        per_block = sum(2 * m.weight.numel() for m in (block.qkv, block.proj, block.fc, block.fc_proj))
        return len(model.blocks) * per_block + 2 * model.head.weight.numel()
    raise ValueError(f"no FLOP count for a '{kind}' model")


def compare(names: list[str], device="cpu", kinds=KINDS, repeats: int = 3, steps: int = 10,
            sample_names: int = 200, seed: int = 42) -> dict:
    """One race over `kinds`; see the module docstring. Returns {kind: figures} and the
    machine's matrix-product rate measured in the same race."""
    vocab = Vocab.from_words(names)
    longest = 2 * max(map(len, names)) + 1  # sampling's limit, as `wavenet sample` sets it
    train_words, val_words, _ = split_words(names)
    val_targets = sum(len(w) + 1 for w in val_words)
    fns, out, prepared = {}, {}, {}
    entries = [(kind, kind) for kind in kinds]
    if "wavenet" in kinds:
        entries.insert(entries.index(("wavenet", "wavenet")) + 1, (AUTOGRAD, "wavenet"))
    for label, kind in entries:
        cfg = RECIPES[kind]
        g = torch.Generator().manual_seed(seed)
        model = build_model(model_config(kind), len(vocab), g).to(device)
        if label == AUTOGRAD:
            model.fused = False
        batches = make_batches(model, train_words, vocab, cfg, g, device)
        optimizer = make_optimizer(model, replace(cfg, learning_rate=cfg.learning_rate / 100))
        counted = {"targets": 0}

        def step(model=model, batches=batches, optimizer=optimizer, cfg=cfg, counted=counted):
            X, Y = batches.next()
            _, loss = model(X, Y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
            optimizer.step()
            counted["targets"] += batches.counts[1]

        fns[f"{label}.train"] = lambda step=step: [step() for _ in range(steps)]
        prepared[label] = (kind, model, batches, counted)
        if label == AUTOGRAD:
            continue  # evaluation and sampling are the WaveNet's own: no second copy
        val_batches = [(x.to(device), y) for x, y in eval_batches(model, val_words, vocab)]
        fns[f"{kind}.eval"] = lambda m=model, b=val_batches: split_loss(m, val_words, vocab, device,
                                                                        batches=b)
        fns[f"{kind}.sample"] = lambda m=model: generate(m, sample_names, generator=seeded(),
                                                         max_new_tokens=longest, device=device)
    product, product_flops = gemm(2048, 256, 256, device)
    reps = 20
    fns["gemm"] = lambda: [product() for _ in range(reps)]
    times = race(fns, repeats, device)
    gemm_gflops = reps * product_flops / times["gemm"] / 1e9
    for label, (kind, model, batches, counted) in prepared.items():
        targets_per_step = counted["targets"] / ((repeats + 1) * steps)  # every timed and warm-up step
        train_rate = steps * targets_per_step / times[f"{label}.train"]
        gflops = 3 * forward_flops(model) * train_rate / 1e9
        model.train()
        X, Y = batches.next()
        memory = saved_bytes(lambda m=model, X=X, Y=Y: m(X, Y)[1].backward()) / batches.counts[1]
        out[label] = dict(params=sum(p.numel() for p in model.parameters()),
                          batch_size=RECIPES[kind].batch_size,
                          targets_per_step=targets_per_step, train_targets_per_s=train_rate,
                          train_ms_per_step=times[f"{label}.train"] / steps * 1e3, train_gflops=gflops,
                          train_fraction=gflops / gemm_gflops, forward_flops=forward_flops(model),
                          bytes_per_target=memory)
        if label != AUTOGRAD:
            out[label].update(eval_targets_per_s=val_targets / times[f"{kind}.eval"],
                              sample_names_per_s=sample_names / times[f"{kind}.sample"])
    return dict(kinds=out, gemm_gflops=gemm_gflops, repeats=repeats, steps=steps, sample_names=sample_names,
                threads=torch.get_num_threads())


def _figure(row: dict, key: str) -> str:
    return f"{row[key]:,.0f}" if key in row else "(the same model)"


def markdown(result: dict) -> str:
    lines = ["| kind | params | batch | targets / step | training targets/s | ms / step | GFLOP/s (of GEMM) "
             "| eval targets/s | saved bytes / target | sampling names/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, r in result["kinds"].items():
        lines.append(f"| {kind} | {r['params']:,} | {r['batch_size']} | {r['targets_per_step']:.0f} | "
                     f"{r['train_targets_per_s']:,.0f} | {r['train_ms_per_step']:.1f} | "
                     f"{r['train_gflops']:.1f} ({r['train_fraction']:.0%}) | "
                     f"{_figure(r, 'eval_targets_per_s')} | "
                     f"{r['bytes_per_target']:,.0f} | {_figure(r, 'sample_names_per_s')} |")
    lines += ["", f"Every kind at its default shape and recipe batch, on the lecture's names, in one race "
              f"(median of {result['repeats']} alternating repeats after a warm-up; {result['steps']} "
              f"training steps each), {result['threads']} threads; the machine's matrix product "
              "(2,048 x 256 x 256) ran "
              f"at {result['gemm_gflops']:.0f} GFLOP/s in the same race. GFLOP/s count 3 x the forward "
              "matrix-product FLOPs per real target; eval: `split_loss` over the val split; sampling: "
              f"{result['sample_names']} names at a time, cached (the MLP: its window)."]
    return "\n".join(lines)

