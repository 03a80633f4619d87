"""One training loop for any model with the contract `model(X, Y) -> (logits, loss)`.

The recipe is a `config.TrainConfig` (the lecture's by default). What a step feeds the model
comes from a batch source (random windows for the MLP, groups of whole names for the
convolution); the loop itself knows nothing about either, nor about files: what a run
directory holds is `rundir.py`'s concern.
"""

from __future__ import annotations

import math
import signal
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from . import distributed
from .config import RECIPES, TrainConfig  # noqa: F401  (RECIPES lived here; still importable)
from .data import pad_names, window_starts
from .distributed import Group, share
from .errors import WavenetError
from .packed import pack


def learning_rate_at(cfg: TrainConfig, step: int) -> float:
    """The rate of step `step` (0-based). First `cfg.warmup` steps: a linear ramp up to
    cfg.learning_rate. Then the "step" schedule, the lecture's: the full rate until
    int(cfg.decay_at * cfg.max_steps) (the lecture: 75% of the steps), then a tenth of it; or
    "cosine": half a cosine from the full rate down to a tenth of it at the last step."""
    lr = cfg.learning_rate
    if step < cfg.warmup:
        return lr * (step + 1) / cfg.warmup
    if cfg.schedule == "step":
        return lr if step < int(cfg.decay_at * cfg.max_steps) else lr / 10
    progress = (step - cfg.warmup) / max(cfg.max_steps - 1 - cfg.warmup, 1)  # 0 .. 1
    return lr / 10 + (lr - lr / 10) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class WindowBatches:
    """The lecture's batches: `batch_size` windows drawn uniformly, with replacement, from
    one torch.Generator (the same stream that initialised the model, as in the lecture).

    With a process `group` (torchrun), every rank draws the same batch and keeps its share
    (distributed.share). `counts`: (targets in this rank's share, in the whole batch) of the
    last batch; every window is one target."""

    def __init__(self, X: torch.Tensor, Y: torch.Tensor, batch_size: int, generator: torch.Generator,
                 device="cpu", group: Group | None = None, rows: torch.Tensor | None = None):
        self.X, self.Y = X.to(device), Y.to(device)
        self.rows = None if rows is None else rows.to(device)
        self.batch_size, self.generator, self.device, self.group = batch_size, generator, device, group
        self.counts = (batch_size, batch_size)

    @classmethod
    def from_words(cls, words, vocab, block_size: int, batch_size: int, generator: torch.Generator,
                   device="cpu", group: Group | None = None) -> WindowBatches:
        """The windows of `build_windows(words, ...)`, drawn alike, but kept as one id per
        position (`data.window_starts`) and cut out per batch: a big corpus costs ~2 ids per
        target instead of block_size + 1."""
        seq, first = window_starts(words, vocab, block_size)
        seq = seq.to(device)  # then the unfolded view stays a view on the device too
        return cls(seq.unfold(0, block_size, 1), seq[first.to(device) + block_size], batch_size, generator,
                   device, group, rows=first)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(0, len(self.Y), (self.batch_size,), generator=self.generator)
        ix = ix[share(self.batch_size, self.group)].to(self.device)  # this rank's windows of the batch
        self.counts = (len(ix), self.batch_size)
        return self.X[ix if self.rows is None else self.rows[ix]], self.Y[ix]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class NameBatches:
    """Whole names for the convolution, `batch_size` names per step.

    Each epoch shuffles the names and cuts them into batches, so a batch is a random sample
    of names, as the MLP's batch is a random sample of windows. `group_by_length` = K > 0
    sorts names by length within chunks of K batches before cutting, which cuts padding but
    makes each batch's BatchNorm statistics specific to one length, and the model learns to
    read them (docs/whole-name-training.md); 0, the default, keeps batches random.
    The batch of step s depends only on (seed, s), so resuming needs nothing but the step.
    With a process `group` (torchrun), every rank plans the same batches and takes its
    contiguous share of each; `counts`: (targets in this rank's share, in the whole batch).

    `packed` (the default): `next()` returns (`packed.PackedNames`, None), the fused
    training step's layout, built from names encoded once per run; False: `pad_names`
    rows (X, Y), the reference path. Both hold the same names in the same order.
    `dilations`: the model's layers' dilations, for the packing (default: the tree's).
    """

    def __init__(self, words, vocab, block_size: int, batch_size: int, seed: int, device="cpu",
                 group_by_length: int = 0, packed: bool = True, dilations=None, group: Group | None = None):
        self.words, self.vocab, self.block_size = list(words), vocab, block_size
        self.batch_size, self.seed, self.device, self.group = batch_size, seed, device, group
        self.counts = (0, 0)
        self.group_by_length, self.packed, self.dilations = group_by_length, packed, dilations
        self.per_epoch = -(-len(self.words) // batch_size)
        self.step, self._epoch, self._plan = 0, None, None
        if packed:  # every name's ids, once: (all characters, lengths, where each begins)
            self._chars, self._lengths = vocab.encode_all(self.words)
            self._starts = torch.cumsum(self._lengths, 0) - self._lengths

    def _make_plan(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.words), generator=g).tolist()
        if self.group_by_length > 0:
            chunk = self.group_by_length * self.batch_size
            order = [j for i in range(0, len(order), chunk)
                     for j in sorted(order[i:i + chunk], key=lambda j: len(self.words[j]))]
        batches = [order[k:k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        if self.group_by_length > 0:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def next_names(self) -> list[int]:
        """The indices into `words` of the next batch's names (advances the step)."""
        epoch, k = divmod(self.step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._plan = epoch, self._make_plan(epoch)
        self.step += 1
        return self._plan[k]

    def next(self):
        chosen = self.next_names()
        targets = [len(self.words[j]) + 1 for j in chosen]
        part = share(len(chosen), self.group)  # this rank's names of the batch
        chosen = chosen[part]
        self.counts = (sum(targets[part]), sum(targets))
        if not self.packed:
            X, Y = pad_names([self.words[j] for j in chosen], self.vocab, self.block_size)
            return X.to(self.device), Y.to(self.device)
        chosen = torch.tensor(chosen, dtype=torch.long)
        lengths, starts = self._lengths[chosen], self._starts[chosen]
        shift = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths)
        chars = self._chars[torch.arange(len(shift)) + shift]
        batch = pack(chars, lengths, self.block_size, len(self.vocab), dilations=self.dilations)
        if self.group is not None:
            batch.n_group_targets = self.counts[1]
        return batch.to(self.device), None

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]


def make_batches(model, words, vocab, cfg: TrainConfig, generator: torch.Generator, device="cpu",
                 group: Group | None = None):
    """The batch source a model trains on: whole names for the conv, the lecture's random
    windows (drawn from `generator`, the stream that initialised the model) for the MLP;
    this rank's share of each batch under torchrun (`group`)."""
    if group is not None and cfg.batch_size < group.world_size:
        raise WavenetError(f"batch_size {cfg.batch_size} is smaller than the {group.world_size} processes: "
                           "each needs a share of every batch", param="batch_size")
    if model.kind == "mlp":
        return WindowBatches.from_words(words, vocab, model.block_size, cfg.batch_size, generator, device,
                                        group)
    return NameBatches(words, vocab, model.block_size, cfg.batch_size, cfg.seed, device,
                       group_by_length=cfg.group_by_length, dilations=model.dilations, group=group)


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """"sgd": the lecture's optimizer, plain SGD (no momentum, no weight decay). "adamw":
    AdamW, betas (0.9, 0.99), weight decay on the matrices (embedding, kernels, 1x1s), none
    on biases and norm gains. `foreach` updates every parameter in one call: the same
    arithmetic as one call per parameter (bit-identical for SGD, checked), with less
    per-step overhead for the small steps of whole-name training."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, foreach=True)
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.99), foreach=True)


class Diverged(WavenetError):
    """The loss became NaN or infinite; parameters are left at the last finite step."""


@dataclass
class LoopResult:
    step: int             # steps completed in total
    interrupted: bool     # stopped early by Ctrl-C (SIGINT)


def train_loop(model, optimizer, batches, cfg: TrainConfig, *, start_step: int = 0, lossi: list | None = None,
               on_interval: Callable[[int], None] | None = None, progress: bool = True,
               ddp=None) -> LoopResult:
    """Run steps start_step .. cfg.max_steps - 1. `lossi` collects log10(loss) per step, as
    in the lecture. `on_interval(step)` is called every cfg.eval_interval steps (for val
    loss and checkpoints). Ctrl-C or SIGTERM finishes the current step and returns
    interrupted=True, so the caller can save a checkpoint that resumes exactly; a second
    Ctrl-C aborts (one process only: torchrun forwards the terminal's Ctrl-C to its workers
    again, so there every signal means "stop after this step").

    cfg.dtype "bf16": the forward pass runs under bfloat16 autocast (the backward pass follows
    it); parameters, gradients and the optimizer stay float32.

    Under torchrun (`ddp`: the model wrapped in DistributedDataParallel), each rank's loss
    is its share of the global batch's mean; one small all-reduce per step gives every
    rank the global loss and whether any rank was asked to stop, so all stop at one step
    (it runs during the backward pass; a non-finite loss still stops before the update).
    """
    lossi = [] if lossi is None else lossi
    group = distributed.active()
    forward = model if ddp is None else ddp
    stop = {"asked": False}
    device_type = next(model.parameters()).device.type
    bf16 = cfg.dtype == "bf16"
    autocast = (lambda: torch.autocast(device_type, dtype=torch.bfloat16)) if bf16 else nullcontext

    def on_signal(signum, frame):
        if stop["asked"] and signum == signal.SIGINT and group is None:
            raise KeyboardInterrupt
        stop["asked"] = True

    # signal handlers can only be installed from the main thread (not, say, a notebook worker)
    in_main = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGINT, signal.SIGTERM) if in_main else ()
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    bar = tqdm(total=cfg.max_steps, initial=start_step, disable=not progress, dynamic_ncols=True,
               mininterval=0.5)
    step, agreed = start_step, False  # under torchrun: some rank was asked to stop, as of the last step

    def stopping() -> bool:  # one process decides alone; a group by the step's all-reduce
        return stop["asked"] if group is None else bool(agreed)

    model.train()
    try:
        while step < cfg.max_steps and not stopping():
            X, Y = batches.next()
            with autocast():
                _, loss = forward(X, Y)
            if group is None:
                check_loss(value := loss.item(), step)
            else:  # the global loss and the stop flag, summed while the backward pass runs
                n_local, n_all = batches.counts
                shared = torch.stack([loss.detach().double() * (n_local / n_all),
                                      loss.new_tensor(float(stop["asked"]), dtype=torch.float64)])
                summing = torch.distributed.all_reduce(shared, async_op=True)
                loss = loss * (n_local / n_all * group.world_size)  # DDP averages: N x this rank's share
            for g in optimizer.param_groups:
                g["lr"] = learning_rate_at(cfg, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if group is not None:
                summing.wait()
                value, agreed = shared.tolist()
                check_loss(value, step)  # on every rank alike, before the update
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
            optimizer.step()
            lossi.append(math.log10(value))
            step += 1
            if step % 100 == 0:
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                check_finite(model, step)
                if on_interval is not None:
                    on_interval(step)
                    model.train()
    finally:
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return LoopResult(step=step, interrupted=stopping() and step < cfg.max_steps)


def check_loss(value: float, step: int) -> None:
    if not math.isfinite(value):
        raise Diverged(f"loss became {value} at step {step + 1}: try a lower learning_rate",
                       param="learning_rate")


def check_finite(model, step: int) -> None:
    """A finite loss can still leave infinite weights behind (a huge learning rate): check
    before anything is saved or evaluated."""
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if not torch.isfinite(tensor).all():
            raise Diverged(f"{name} became non-finite by step {step}: try a lower learning_rate",
                           param="learning_rate")
