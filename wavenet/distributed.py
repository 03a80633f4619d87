"""Training across processes: torchrun's environment, the process group, and the few
collectives the package needs.

`torchrun --nproc_per_node N -m wavenet train ...` starts N copies of `wavenet train` with
RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous) in their environment. `setup` joins
them into one process group (gloo on CPU, NCCL on CUDA); outside torchrun, or with one
process, there is no group and nothing here does anything, so a plain `wavenet train` runs
exactly as before.

How N processes compute what one computes (docs/distributed.md):
- every rank draws the same global batch from the same seeded stream and keeps its own
  contiguous share of it (`share`);
- BatchNorm takes its statistics from the whole global batch: each rank's count, sums and
  sums of squares are summed across ranks (`moments`, in float64), and in the backward pass
  the sums that couple the rows are summed too;
- every rank's loss is its share of the global mean (local sum / global count), and
  DistributedDataParallel averages the gradients, so each rank back-propagates N times its
  share (train.py);
- evaluation splits the batches between ranks and sums losses and target counts.

A collective that fails (a rank died, the network went) or waits longer than the timeout
raises `GroupError`: one line, exit 1, instead of a hang.
"""

from __future__ import annotations

import datetime
import gc
import os
import re
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from .errors import EXIT_FAILED, WavenetError

DEFAULT_TIMEOUT_S = 300
T = TypeVar("T")


class GroupError(WavenetError):
    """The process group failed: a rank died, the network failed, or a collective timed out."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class Group:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_GROUP: Group | None = None


def environment() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's variables, or None outside torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        values = tuple(int(os.environ.get(name, "0")) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise WavenetError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)"
                           ) from None
    rank, world_size, local_rank = values
    if not 0 <= rank < world_size:
        raise WavenetError(f"RANK {rank} is outside WORLD_SIZE {world_size}")
    return values


def setup(device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[Group | None, str]:
    """Join torchrun's process group, if there is one of more than one process. Returns
    (the group or None, the device this rank uses: "cuda" means its own GPU, LOCAL_RANK)."""
    global _GROUP
    env = environment()
    if env is None or env[1] == 1:
        return None, device
    rank, world_size, local_rank = env
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise WavenetError(f"LOCAL_RANK {local_rank}: this machine has {torch.cuda.device_count()} CUDA "
                               "devices (run at most that many processes per node)")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if device == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as e:
        raise GroupError(f"rank {rank}: could not join the process group ({first_line(e)})") from None
    _GROUP = Group(rank, world_size, local_rank)
    return _GROUP, device


def teardown(clean: bool = True) -> None:
    """Leave the group. `clean` (every rank got here without an error): wait for all, so no
    rank closes its connections while another still uses them. The collectives' last
    users (DDP's reducer, pending work) are collected first: one left alive until the
    interpreter exits would end the process with an abort instead of its exit code."""
    global _GROUP
    if _GROUP is None:
        return
    gc.collect()
    try:
        if clean:
            barrier()
    finally:
        _GROUP = None
        if dist.is_initialized():
            dist.destroy_process_group()
        gc.collect()


def active() -> Group | None:
    """The group this process trains in, or None (one process)."""
    return _GROUP


def first_line(e: BaseException) -> str:
    """The gist of a backend's error: its first sentence, without the source location
    ("[.../pair.cc:537] Read error ...: Connection reset by peer. This is typically ...")."""
    text = str(e).strip().splitlines()
    text = re.sub(r"^\[[^\]]*\]\s*", "", text[0]) if text else ""
    return re.split(r"(?<=[^.\s]{2})\. ", text, maxsplit=1)[0] or type(e).__name__


def share(n: int, group: Group | None) -> slice:
    """This rank's contiguous share of n items: ranks take n // N or n // N + 1 each, in order."""
    if group is None:
        return slice(0, n)
    return slice(n * group.rank // group.world_size, n * (group.rank + 1) // group.world_size)


def all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor across ranks, in place; nothing without a group."""
    if _GROUP is not None:
        dist.all_reduce(t)
    return t


def moments(rows: torch.Tensor, weight: torch.Tensor | None = None, differentiable: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, unbiased variance) per feature of rows (N, C) over every rank's rows (each row
    counted `weight` times), from float64 counts, sums and sums of squares summed across ranks.
    `differentiable`: gradients flow back through the sum to every rank's rows (autograd)."""
    x = rows.double()
    if weight is None:
        n, s, ss = x.new_full((1,), float(len(rows))), x.sum(0), x.square().sum(0)
    else:
        w = weight.double()
        n, s, ss = w.sum().view(1), w @ x, w @ x.square()
    C = rows.shape[1]
    total = torch.cat([n, s, ss])
    total = _SumAcrossRanks.apply(total) if differentiable else all_reduce_(total)
    n, mean = total[0], total[1:C + 1] / total[0]
    var = (total[C + 1:] - n * mean.square()) / (n - 1)
    return mean.to(rows.dtype), var.to(rows.dtype)


class _SumAcrossRanks(torch.autograd.Function):
    """y = the sum of x over ranks; in the backward pass, each rank's x receives the sum of
    every rank's gradient of y (each rank's loss depends on every rank's x through y)."""

    @staticmethod
    def forward(ctx, x):
        return all_reduce_(x.clone())

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_(grad.clone())


def agree(ok: bool) -> bool:
    """True on every rank iff `ok` is true on every rank (a collective)."""
    if _GROUP is None:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=_device())
    dist.all_reduce(flag)
    return flag.item() == 0


def start_together(prepare: Callable[[], T]) -> T:
    """`prepare()` on every rank, then every rank learns whether all of them succeeded (a
    collective). A rank whose `prepare` raised stops with its own error; the others stop too,
    instead of waiting for it in the next collective. One process: just `prepare()`."""
    ok = False
    try:
        result = prepare()
        ok = True
        return result
    finally:
        if _GROUP is not None and not agree(ok) and ok:
            raise WavenetError("another process of the group could not start (its error is above)")


def same_everywhere(value) -> bool:
    """Whether every rank holds the same `value` (a collective; picklable values)."""
    return len(set(gather_object(value))) == 1


def is_group_failure(e: BaseException) -> bool:
    """Whether an error is a collective's failure (a peer died or hung), not a bug."""
    text = str(e).lower()
    return isinstance(e, dist.DistError) or any(word in text for word in (
        "gloo", "nccl", "connection", "timed out", "timeout", "peer", "broken pipe"))


def gather_object(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (a collective)."""
    if _GROUP is None:
        return [obj]
    out = [None] * _GROUP.world_size
    dist.all_gather_object(out, obj)
    return out


def from_main(obj):
    """Rank 0's `obj` on every rank (a collective; picklable values); one process: `obj`."""
    return gather_object(obj)[0]


def barrier() -> None:
    if _GROUP is not None:
        agree(True)


def _device() -> str:
    return "cuda" if dist.get_backend() == "nccl" else "cpu"
