"""One way to save a checkpoint and one way to load it.

A checkpoint is a dict of tensors and plain data (no pickled classes), so it loads with
`torch.load(..., weights_only=True)`, which refuses anything that would run code. It is
serialised in memory, written to a temporary file in the same folder, flushed to disk, then
moved over the old one with `os.replace` (`write_atomic`): a crash, Ctrl-C or full disk at
any moment leaves either the old or the new checkpoint, never half of one, and a failed
write is the system's own OSError (ENOSPC: "No space left on device"), not torch's.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path

import torch

from .config import model_record
from .data import Vocab
from .errors import CheckpointError
from .models import build_model

FORMAT, VERSION = "wavenet-checkpoint", 1


def model_state(model, vocab: Vocab) -> dict:
    """The part of a checkpoint that rebuilds the model: its config record, weights and
    buffers, and vocabulary. Training adds optimizer, step, batches, ... beside it."""
    return dict(model_config=model_record(model.config, model.vocab_size), model=model.state_dict(),
                vocab=vocab.to_dict())


def save_checkpoint(path, state: dict) -> None:
    """Atomically write `state` (a dict with at least 'model_config', 'model', 'vocab')."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    write_atomic(path, buffer.getbuffer())


def write_atomic(path, data) -> None:
    """Write the bytes `data` to `path` all at once or not at all: into a temporary file
    beside it (PATH.*.tmp), flushed to disk, then renamed over it. On any failure (OSError,
    a signal) the temporary file is removed, the old file is untouched, and the error rises."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a run's files are ordinary files
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def load_checkpoint(path, map_location="cpu", kind: str | None = None) -> dict:
    """Load and validate a checkpoint. Raises CheckpointError with one line for a missing,
    truncated, corrupt or untrusted file, or one for another model kind than `kind`."""
    path = Path(path)
    if path.is_dir():  # run directories are rundir.py's: wavenet.load(dir) or RunDir(dir).load()
        raise CheckpointError(f"{path}: is a run directory, not a checkpoint file "
                              "(load it with wavenet.load or RunDir)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported" in str(e):
            raise CheckpointError(
                f"{path}: refused: it holds pickled objects other than tensors and plain data"
                " (an untrusted or foreign file)") from None
        raise CheckpointError(f"{path}: corrupt checkpoint ({_first_line(e)})") from None
    except Exception as e:  # torch.load raises many types for damaged bytes
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({_first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a wavenet checkpoint")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')} is not supported "
                              f"(expected {VERSION})")
    for key in ("model_config", "model", "vocab"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint is missing '{key}'")
    found = ckpt["model_config"].get("kind")
    if kind is not None and found != kind:
        raise CheckpointError(f"{path}: checkpoint holds a '{found}' model, expected '{kind}'")
    return ckpt


WEIGHTS = ("best", "last")


def model_from_checkpoint(ckpt: dict, device="cpu", weights: str = "best"):
    """Rebuild the model (in eval mode) and its vocabulary from a loaded checkpoint.
    `weights`: "best", those with the lowest val loss of the run (`ckpt["best"]`, kept by
    `wavenet train` beside the last; a checkpoint without them has only its last), or
    "last", the weights training stopped at (what --resume continues), or, for a run that
    averaged its weights (`ema`), the average at that step."""
    if weights not in WEIGHTS:
        raise CheckpointError(f"weights must be best or last, got '{weights}'", param="weights")
    try:
        vocab = Vocab.from_dict(ckpt["vocab"])
        model = build_model(ckpt["model_config"])
        best = weights == "best" and "best" in ckpt
        # a run with a weight average (TrainConfig.ema): its last weights are the average
        last = {**ckpt["model"], **ckpt["ema"]} if "ema" in ckpt else ckpt["model"]
        model.load_state_dict(ckpt["best"]["model"] if best else last)
    except Exception as e:  # wrong shapes, missing keys: a damaged or hand-edited file
        raise CheckpointError(f"checkpoint does not match its model config ({_first_line(e)})") from None
    if len(vocab) != model.vocab_size:
        raise CheckpointError(f"checkpoint vocabulary has {len(vocab)} ids but the model {model.vocab_size}")
    return model.to(device).eval(), vocab


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
