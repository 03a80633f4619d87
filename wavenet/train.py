"""One training loop for any model with the contract `model(X, Y) -> (logits, loss)`: the
loop, the learning-rate schedule and the optimizer.

The recipe is a `config.TrainConfig` (the lecture's by default). What a step feeds the model
comes from a batch source (batches.py: random windows for the MLP, whole names for the
convolutional models); the loop knows nothing about either, nor about files: what a run
directory holds is `rundir.py`'s concern.
"""

from __future__ import annotations

import copy
import math
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Callable

import torch
from tqdm import tqdm  # the text bar: tqdm.auto wants ipywidgets in a notebook

from . import distributed
from .batches import NameBatches, WindowBatches, make_batches  # noqa: F401  (they lived here; still importable)
from .config import RECIPES, TrainConfig  # noqa: F401  (RECIPES lived here; still importable)
from .errors import WavenetError


def learning_rate_at(cfg: TrainConfig, step: int) -> float:
    """The rate of step `step` (0-based). First `cfg.warmup` steps: a linear ramp up to
    cfg.learning_rate. Then the "step" schedule, the lecture's: the full rate until
    int(cfg.decay_at * cfg.max_steps) (the lecture: 75% of the steps), then a tenth of it; or
    "cosine": half a cosine from the full rate down to cfg.final_lr of it (a tenth by default)
    at the last step. Where a time budget re-fitted the steps (cfg.schedule_knots), the
    schedule runs on `schedule_progress` instead of the step count."""
    lr = cfg.learning_rate
    if step < cfg.warmup:
        return lr * (step + 1) / cfg.warmup
    if cfg.schedule == "step":
        if cfg.schedule_knots:
            return lr if schedule_progress(cfg, step) < cfg.decay_at else lr / 10
        return lr if step < int(cfg.decay_at * cfg.max_steps) else lr / 10
    progress = schedule_progress(cfg, step)  # 0 .. 1
    low = lr / 10 if cfg.final_lr == 0.1 else lr * cfg.final_lr  # lr / 10: the arithmetic runs have used
    return low + (lr - low) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def schedule_progress(cfg: TrainConfig, step: int) -> float:
    """How far the schedule is at `step`: 0 where the decay starts (cosine: the end of the
    warm-up; step: step 0), 1 at its end (cosine: the last step; step: max_steps). Without
    knots, a straight line over the steps. Each knot (k, p, e) of cfg.schedule_knots, written
    when a time budget re-fitted max_steps at step k, ends the line that was to reach 1 at e
    (at progress p there) and starts one from p to 1 at the new end, so the rate goes on
    from where it was, neither jumping nor restarting."""
    k0, p0, e0 = _schedule_start(cfg), 0.0, _schedule_end(cfg)
    for k, p, e in cfg.schedule_knots:  # in step order
        if step < k:
            e0 = e  # the line that ends at this knot was aimed at e
            break
        k0, p0 = k, p
    return p0 + (1 - p0) * ((step - k0) / max(e0 - k0, 1))


def dropout_at(cfg: TrainConfig, step: int, start: float) -> float:
    """The dropout of step `step` under cfg.final_dropout: `start` (the model's dropout) up
    to where the learning rate starts to decay (the warm-up's end, for cosine), then a
    straight line on `schedule_progress` to cfg.final_dropout at the last step, so it
    follows a time budget's re-fits as the rate does. Without final_dropout: `start`."""
    if cfg.final_dropout is None:
        return start
    return start + (cfg.final_dropout - start) * min(max(schedule_progress(cfg, step), 0.0), 1.0)


def _schedule_start(cfg: TrainConfig) -> int:
    return cfg.warmup if cfg.schedule == "cosine" else 0


def _schedule_end(cfg: TrainConfig) -> int:
    return cfg.max_steps - 1 if cfg.schedule == "cosine" else cfg.max_steps


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """"sgd": the lecture's optimizer, plain SGD (no momentum, no weight decay): `PlainSGD`.
    "adamw": AdamW, betas (0.9, 0.99), weight decay on the matrices (embedding, kernels,
    1x1s), none on biases and norm gains, `fused`: the whole update in one kernel, 3.3x faster
    than `foreach` on this CPU for the WaveNet's million parameters (2.8 against 9.2 ms, one
    thread), the same arithmetic up to rounding (2e-16 apart after 20 float64 steps). A
    checkpoint written with `foreach` resumes with it: the optimizer's saved settings win."""
    if cfg.optimizer == "sgd":
        return PlainSGD(model.parameters(), lr=cfg.learning_rate)
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.99), fused=True)


class PlainSGD(torch.optim.Optimizer):
    """p -= lr * p.grad for every parameter with a gradient, all in one `foreach` call: the
    arithmetic of `torch.optim.SGD` without momentum or weight decay, bit for bit
    (tests/test_train.py), without its per-step bookkeeping (it sorts the tensors by device
    and dtype and reads eight options every step), which a conv step of 256 positions, a few
    milliseconds, notices. `zero_grad` drops the gradients (set_to_none) in a plain loop.
    Its state_dict is `SGD`'s shape (no per-parameter state), so the checkpoints of either
    load into the other."""

    def __init__(self, params, lr: float):
        super().__init__(params, dict(lr=lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                                      maximize=False, foreach=True, differentiable=False, fused=None))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                torch._foreach_add_(params, [p.grad for p in params], alpha=-group["lr"])
        return loss

    def zero_grad(self, set_to_none: bool = True):
        if not set_to_none:
            return super().zero_grad(set_to_none=False)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


class WeightAverage:
    """An exponential moving average of a model's floating-point state (its weights and
    buffers), for `TrainConfig.ema`. `update(step)` after step `step` (0-based) moves it
    towards the live state by 1 - d, d = min(decay, (1 + step) / (10 + step)): the early
    steps, whose weights are far from the final ones, fade quickly. One fused call a step."""

    def __init__(self, model, decay: float):
        if not 0 < decay < 1:
            raise WavenetError(f"ema must be between 0 and 1, got {decay}", param="ema")
        self.decay = decay
        state = model.state_dict()  # detached views of the live tensors
        self.names = [name for name, t in state.items() if t.is_floating_point()]
        self.live = [state[name] for name in self.names]
        self.average = [t.detach().clone() for t in self.live]

    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(self.average, self.live, 1 - d)

    def state_dict(self) -> dict:
        """The average, by state_dict name (copies)."""
        return {name: t.clone() for name, t in zip(self.names, self.average)}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for name, t in zip(self.names, self.average):
                t.copy_(state[name])

    def apply_to(self, model) -> dict:
        """Put the average into `model` (the one it averages); returns the live state, to
        put back with `model.load_state_dict`."""
        live = {name: t.clone() for name, t in model.state_dict().items()}
        with torch.no_grad():
            torch._foreach_copy_(self.live, self.average)
        return live


class Diverged(WavenetError):
    """The loss became NaN or infinite; parameters are left at the last finite step."""


@dataclass
class LoopResult:
    step: int             # steps completed in total
    interrupted: bool     # stopped early by Ctrl-C (SIGINT)


def train_loop(model, optimizer, batches, cfg: TrainConfig, *, start_step: int = 0, lossi: list | None = None,
               on_interval: Callable[[int], TrainConfig | None] | None = None, progress: bool = True,
               ddp=None, average: WeightAverage | None = None) -> LoopResult:
    """Run steps start_step .. cfg.max_steps - 1. `lossi` collects log10(loss) per step, as
    in the lecture. `on_interval(step)` is called every cfg.eval_interval steps (for val
    loss and checkpoints); if it returns a TrainConfig (a time budget's re-fitted steps,
    `refit_to_budget`), the loop follows that from the next step on. Ctrl-C or SIGTERM
    finishes the current step and returns interrupted=True, so the caller can save a
    checkpoint that resumes exactly; a second Ctrl-C aborts (one process only: torchrun
    forwards the terminal's Ctrl-C to its workers again, so there every signal means "stop
    after this step").

    cfg.dtype "bf16": the forward pass runs under bfloat16 autocast (the backward pass follows
    it); parameters, gradients and the optimizer stay float32.

    Under torchrun (`ddp`: the model wrapped in DistributedDataParallel), each rank's loss
    is its share of the global batch's mean; one small all-reduce per step gives every
    rank the global loss and whether any rank was asked to stop, so all stop at one step
    (it runs during the backward pass; a non-finite loss still stops before the update).

    `average` (a `WeightAverage`) is updated after every optimizer step.

    cfg.final_dropout: each step sets the p of the model's `dropouts()` to `dropout_at`;
    they are back at the model's own dropout when the loop returns.
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

    ramped = model.dropouts() if cfg.final_dropout is not None else []
    start_p = model.config.dropout if ramped else None
    model.train()
    try:
        while step < cfg.max_steps and not stopping():
            if ramped:
                p = dropout_at(cfg, step, start_p)
                for m in ramped:
                    m.p = p
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
            if average is not None:
                average.update(step)
            lossi.append(math.log10(value))
            step += 1
            if step % 100 == 0:
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                check_finite(model, step)
                if on_interval is not None:
                    refitted = on_interval(step)
                    if refitted is not None:
                        cfg = refitted
                        bar.total = cfg.max_steps
                    model.train()
    finally:
        for m in ramped:
            m.p = start_p
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


# ----------------------------------------------------------------------------- a time budget

PROBE_WARM = 5         # steps run before the clock starts (first-call costs)
PROBE_CHUNK = 10       # steps timed at a time
PROBE_SECONDS = 2.0    # the step rate is measured over at least this long
PROBE_FRACTION = 0.02  # or this fraction of the budget, if longer
BUDGET_EVALS = 10      # evaluations in a budgeted run, unless eval_interval is given
REFIT_SLACK = 0.005    # a re-fit moves max_steps only by more than this fraction of it (or 1)


class BudgetTooSmall(WavenetError):
    """The time budget leaves no room for the steps before the first evaluation."""


@dataclass(frozen=True)
class Fitted:
    cfg: TrainConfig       # the recipe with max_steps (and eval_interval) fixed
    step_s: float          # measured seconds per training step
    probe_s: float         # seconds spent measuring, part of the budget
    probe_steps: int       # steps timed


def fit_to_budget(model, batches, cfg: TrainConfig, *, eval_interval_given: bool = False, ddp=None,
                  average: WeightAverage | None = None) -> Fitted:
    """The steps that fit `cfg.time_budget` minutes of training on this machine, measured by
    running the first steps of the run for real (PROBE_WARM untimed, then at least
    PROBE_SECONDS or PROBE_FRACTION of the budget), then putting back everything they
    changed: the weights and buffers, the batch source, torch's random streams and the
    weight `average`, if any (its update is part of a step's cost). The run
    that follows is the fixed-step run of the fitted `max_steps`, bit for bit; the probe's
    time counts against the budget. `eval_interval` becomes max_steps / BUDGET_EVALS unless
    `eval_interval_given`; a budget that does not reach the first evaluation is
    `BudgetTooSmall`. Under torchrun every rank probes the same steps (the loop's
    collectives keep them together) and all take rank 0's measurement."""
    budget_s = cfg.time_budget * 60
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(batches.state_dict()), torch.get_rng_state(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
             None if average is None else average.state_dict())
    optimizer = make_optimizer(model, cfg)  # thrown away with the probe's steps
    probe = replace(cfg, eval_interval=1 << 62, time_budget=0.0)
    device = next(model.parameters()).device

    def run(steps: int, start: int) -> None:
        result = train_loop(model, optimizer, batches, replace(probe, max_steps=start + steps),
                            start_step=start, progress=False, ddp=ddp, average=average)
        if result.interrupted:
            raise KeyboardInterrupt
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    started = time.perf_counter()
    run(PROBE_WARM, 0)
    timed_from, done = time.perf_counter(), 0
    wanted = max(PROBE_SECONDS, PROBE_FRACTION * budget_s)
    while True:
        run(PROBE_CHUNK, PROBE_WARM + done)
        done += PROBE_CHUNK
        now = time.perf_counter()
        if distributed.agree(now - timed_from >= wanted):  # every rank stops at the same chunk
            break
    step_s, probe_s = distributed.from_main(((now - timed_from) / done, now - started))
    model.load_state_dict(saved[0])
    batches.load_state_dict(saved[1])
    torch.set_rng_state(saved[2])
    if saved[3] is not None:
        torch.cuda.set_rng_state_all(saved[3])
    if average is not None:
        average.load_state_dict(saved[4])
    steps = int((budget_s - probe_s) / step_s)
    interval = cfg.eval_interval if eval_interval_given else max(1, -(-steps // BUDGET_EVALS))
    if steps < max(interval, 1):
        need = probe_s + max(interval, 1) * step_s
        raise BudgetTooSmall(
            f"time_budget {cfg.time_budget:g} minutes fits {max(steps, 0):,} steps at the measured "
            f"{step_s * 1e3:.1f} ms a step (after {probe_s:.1f} s measuring it), fewer than the "
            f"{max(interval, 1):,} before the first evaluation: give at least {need / 60:.2g} minutes"
            + (" or a smaller eval_interval" if eval_interval_given else ""),
            param=("time_budget", "eval_interval") if eval_interval_given else "time_budget")
    return Fitted(replace(cfg, max_steps=steps, eval_interval=interval), step_s, probe_s, done)


def refit_to_budget(cfg: TrainConfig, step: int, train_s: float, step_s: float) -> TrainConfig:
    """The recipe re-fitted to the time that is left, at an evaluation: `step` steps done in
    `train_s` seconds of the budget (the probe's included), steps now taking `step_s` seconds
    (measured since the last fit). A shared machine's speed drifts by 10-25% within minutes,
    so one measurement at the start misses the clock; this one re-aims at each evaluation.
    max_steps becomes the steps that fit the rest of the budget (never fewer than `step`: at
    `step` the run ends), and a knot at `step` (schedule_progress) continues the schedule from
    where it stands to its end at the new last step. A change within REFIT_SLACK of the
    steps (or one step) is left alone. The knots and max_steps are recorded in the
    checkpoint's recipe, so a resumed run follows the same schedule."""
    left = cfg.time_budget * 60 - train_s
    steps = step + max(int(left / step_s), 0) if step_s > 0 else cfg.max_steps
    if abs(steps - cfg.max_steps) <= max(1, REFIT_SLACK * cfg.max_steps) or step >= cfg.max_steps:
        return cfg  # near enough: the clock's noise is not worth a knot
    knots = cfg.schedule_knots
    if step > _schedule_start(cfg):  # the decay has begun: hold its place
        knots = (*knots, (step, schedule_progress(cfg, step), _schedule_end(cfg)))
    return replace(cfg, max_steps=steps, schedule_knots=knots)


def extend_recipe(cfg: TrainConfig, step: int, train_s: float, step_s: float | None = None, *,
                  max_steps: int | None = None, time_budget: float | None = None) -> TrainConfig:
    """The recipe of a run at `step` (`train_s` seconds of training so far), lengthened on
    `--resume`: to `max_steps` steps, or, for a run trained to a time budget, to
    `time_budget` minutes (the steps they fit at `step_s` seconds a step; the evaluations
    then re-fit them by the clock, as they always do). Only lengthened: fewer steps or
    minutes than recorded are a WavenetError, as is the other run kind's flag.

    The schedule is re-aimed, not continued: from `step` on the learning rate (and a ramped
    dropout) is what the longer recipe gives at each step, as if the run had been given the
    new length from the start (a budget run: its last line of the schedule, from the last
    re-fit's knot, is stretched to the new end). So a cosine that had decayed rises again to
    where the longer cosine stands at `step`; a run whose rate does not depend on its length
    up to `step` (a constant rate: `--decay-at 1`, or a step schedule whose drop is still
    ahead in both) continues exactly as one run given the final length from the start."""
    if cfg.time_budget and max_steps is not None:
        raise WavenetError(f"resume: this run trains to a time budget ({cfg.time_budget:g} minutes): extend "
                           "it with time_budget, not max_steps", param=("resume", "max_steps", "time_budget"))
    if not cfg.time_budget and time_budget is not None:
        raise WavenetError("resume: this run has no time budget: extend it with max_steps, not time_budget",
                           param=("resume", "max_steps", "time_budget"))
    if max_steps is not None:
        if max_steps < cfg.max_steps:
            raise WavenetError(f"resume: max_steps {max_steps:,} is fewer than the checkpoint's "
                               f"{cfg.max_steps:,}: a run can be extended, not shortened",
                               param=("resume", "max_steps"))
        return replace(cfg, max_steps=max_steps)
    if time_budget is not None:
        if time_budget < cfg.time_budget:
            raise WavenetError(f"resume: time_budget {time_budget:g} is less than the checkpoint's "
                               f"{cfg.time_budget:g} minutes: a run can be extended, not shortened",
                               param=("resume", "time_budget"))
        fits = step + max(int((time_budget * 60 - train_s) / step_s), 0)
        return replace(cfg, time_budget=time_budget, max_steps=max(cfg.max_steps, fits))
    return cfg

