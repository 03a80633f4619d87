"""The run directory: what `wavenet train` leaves in its work directory, and the rules.

    DIR/checkpoint.pt    the latest training state, written atomically (checkpoint.py), and
                         the weights with the best val loss so far ("best")
    DIR/metrics.jsonl    one JSON record per eval interval: step, recent train loss, val loss
    DIR/loss.png         the lecture's loss curve (needs matplotlib, the `plot` extra)
    DIR/.lock            held (flock) by the process training there

A write that fails (a full disk, a quota, an I/O error) is one line naming the file, the
cause and what was kept (`WriteError`, exit 1): the checkpoint and the plot are replaced
atomically, a metrics record is appended whole or not at all, so the last good state is
never lost.

The rules. Everything is checked before anything is written. A new run refuses a directory
that already holds a checkpoint (resume it, or choose another); a run resumes only from a
checkpoint that holds training state. One process trains in a directory at a time. A
temporary file left by a process killed mid-write is removed when the next one starts. On
resume, metrics written after the checkpoint's step are dropped, so no step is logged twice.

The data record (path, SHA-256, split seed, max length, longest item) ties a run to its
input file: `eval` and `sample` rebuild the same split from it and refuse a changed file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import math
import os
from pathlib import Path

import torch

from . import checkpoint as ckpt_io
from .data import load_words, split_words
from .errors import WavenetError, WriteError

SPLIT_SEED = 42  # the lecture's


class RunDir:
    """One run directory. Nothing is created until `create()`."""

    CHECKPOINT, METRICS, LOSS_PLOT, LOCK = "checkpoint.pt", "metrics.jsonl", "loss.png", ".lock"

    def __init__(self, path):
        self.path = Path(path)
        self._lock = None
        self.checkpoint = self.path / self.CHECKPOINT
        self.metrics = self.path / self.METRICS
        self.loss_plot = self.path / self.LOSS_PLOT
        self.saved_step: int | None = None  # the step of the checkpoint on disk, once known

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------ reading

    def load(self, kind: str | None = None) -> dict:
        """The checkpoint, validated (see `checkpoint.load_checkpoint`)."""
        from .ensemble import is_ensemble
        if not self.checkpoint.exists() and is_ensemble(self.path):
            raise WavenetError(f"{self.path}: holds an ensemble (ensemble.json), not one checkpoint")
        if not self.checkpoint.exists():
            raise WavenetError(f"{self.path}: no checkpoint there")
        return ckpt_io.load_checkpoint(self.checkpoint, kind=kind)

    def load_model(self, device="cpu", weights: str = "best"):
        """(model in eval mode, vocabulary, checkpoint dict). `weights`: "best" (lowest val
        loss of the run) or "last" (see `checkpoint.model_from_checkpoint`); for an ensemble's
        directory (ensemble.py), its `models.Ensemble` and member 1's checkpoint."""
        from .ensemble import is_ensemble, load_ensemble
        if not self.checkpoint.exists() and is_ensemble(self.path):
            return load_ensemble(self.path, device, weights)
        ckpt = self.load()
        model, vocab = ckpt_io.model_from_checkpoint(ckpt, device, weights)
        return model, vocab, ckpt

    # ------------------------------------------------------------------ starting a run

    def start(self, resume: bool) -> dict | None:
        """Check, without writing anything, that a run can start here: the checkpoint to
        resume from (resume=True) or None for a new run."""
        if self.path.exists() and not self.path.is_dir():
            raise WavenetError(f"work_dir {self.path}: exists and is not a directory", param="work_dir")
        if not resume:
            self._refuse_existing()
            return None
        if not self.checkpoint.exists():
            raise WavenetError(f"resume: no checkpoint in {self.path}", param="resume")
        ckpt = ckpt_io.load_checkpoint(self.checkpoint)
        if "optimizer" not in ckpt:
            raise WavenetError(f"resume: {self.checkpoint} holds no training state (a converted model); "
                               "train a new run instead", param="resume")
        self.saved_step = ckpt["step"]
        return ckpt

    def create(self, resume: bool) -> None:
        """Make the directory, take its lock for the life of this object's process, and
        clear what a killed process left. Refuses if another process trains here."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WavenetError(f"work_dir {self.path}: cannot create it ({e.strerror})",
                               param="work_dir") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise WavenetError(f"work_dir {self.path}: not writable", param="work_dir")
        f = open(self.path / self.LOCK, "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise WavenetError(f"work_dir {self.path}: another wavenet process is training there",
                               param="work_dir") from None
        self._lock = f  # released when the process exits (or this object is collected)
        if not resume:
            self._refuse_existing()  # another run may have finished here meanwhile
        for name in (self.CHECKPOINT, self.METRICS, self.LOSS_PLOT):
            for stale in self.path.glob(name + ".*.tmp"):  # a write cut short by a kill
                stale.unlink()

    def _refuse_existing(self) -> None:
        if self.checkpoint.exists():
            raise WavenetError(f"{self.checkpoint} exists: pass resume to continue it, "
                               "or choose another work_dir", param=("resume", "work_dir"))

    # ------------------------------------------------------------------ during a run

    def save(self, state: dict) -> None:
        with self._writing(self.checkpoint):
            ckpt_io.save_checkpoint(self.checkpoint, state)
        self.saved_step = state.get("step")

    def append_metrics(self, record: dict) -> None:
        """One JSON line, appended whole or not at all (cut back if the write fails)."""
        line = memoryview((json.dumps(record) + "\n").encode("utf-8"))
        with self._writing(self.metrics):
            fd = os.open(self.metrics, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                size = os.fstat(fd).st_size
                try:
                    while line:
                        line = line[os.write(fd, line):]
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)  # no half record for the next reader
                    raise
            finally:
                os.close(fd)

    def truncate_metrics(self, step: int) -> None:
        """On resume: drop records written after the checkpoint's step, so that a run that
        crashed between two checkpoints does not log the same steps twice."""
        if not self.metrics.exists():
            return
        keep = [line for line in self.metrics.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        with self._writing(self.metrics):
            ckpt_io.write_atomic(self.metrics, "".join(line + "\n" for line in keep).encode("utf-8"))

    def kept(self, good: str = "") -> str:
        """What a failed run leaves: 'the checkpoint of step N is kept (PATH)'."""
        step = self.saved_step
        if step is None:
            if not self.checkpoint.exists():
                return "no checkpoint was written"
            try:  # another process's run (a rank that does not write): read it
                step = self.load()["step"]
            except WavenetError:
                return f"{self.checkpoint} is as it was"
        return f"the {good}checkpoint of step {step:,} is kept ({self.checkpoint})"

    @contextlib.contextmanager
    def _writing(self, path: Path):
        """A failed write of `path` -> one line: the file, the cause, what was kept."""
        try:
            yield
        except OSError as e:
            cause = (e.strerror or type(e).__name__).lower()
            raise WriteError(f"could not write {path} ({cause}); {self.kept()}") from None

    def plot_loss(self, lossi: list) -> str | None:
        """The lecture's curve: log10 of the training loss, averaged over each 1,000 steps
        (over a twentieth of the run when that is fewer), with the val loss of metrics.jsonl
        at its steps. Needs matplotlib (the `plot` extra): returns None once drawn, else why not."""
        try:  # a Figure of its own, not pyplot: the caller's backend and figures stay as they were
            from matplotlib.figure import Figure
        except ImportError:
            return "matplotlib is not installed (pip install -e \".[plot]\")"
        if not lossi:
            return "no steps to plot"
        every = min(1000, max(1, len(lossi) // 20))  # at least 20 points
        n = len(lossi) // every * every
        curve = torch.tensor(lossi[:n], dtype=torch.float64).view(-1, every).mean(1)
        val = []
        if self.metrics.exists():
            records = [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]
            val = [(r["step"], math.log10(r["val_loss"])) for r in records if "val_loss" in r]
        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        ax.plot((torch.arange(len(curve)) * every + every / 2).tolist(), curve.tolist(),
                label=f"train (mean of {every:,} steps)")
        if val:
            ax.plot(*zip(*val), "o-", label="val")
        ax.set_xlabel("step")
        ax.set_ylabel("log10 loss")
        ax.legend()
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png")
        with self._writing(self.loss_plot):
            ckpt_io.write_atomic(self.loss_plot, png.getbuffer())
        return None


# ---------------------------------------------------------------------- the data record

def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_record(path, words: list[str], max_length: int | None) -> dict:
    """What a checkpoint keeps of its data file (`words` as `load_words` read them)."""
    return dict(path=str(Path(path).resolve()), sha256=file_sha256(path), split_seed=SPLIT_SEED,
                max_length=max_length, longest=max(map(len, words)))


def load_split(record: dict, input_file=None) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test), split as at training time, from the recorded data file, or from
    `input_file` (the same file elsewhere, e.g. a run directory copied to another machine);
    either must still have the recorded SHA-256."""
    path = Path(input_file if input_file is not None else record["path"])
    words = load_words(path, record.get("max_length"))
    if file_sha256(path) != record["sha256"]:
        if input_file is not None:
            raise WavenetError(f"{path}: not the file this run was trained on (SHA-256 differs)")
        raise WavenetError(f"{path}: changed since training (SHA-256 differs)")
    return split_words(words, seed=record["split_seed"])


def load(work_dir, device="cpu", weights: str = "best"):
    """The trained model of a run directory, in eval mode, and its vocabulary:
    `model, vocab = wavenet.load("out")`. Works for every model kind. `weights`: "best"
    (the lowest val loss of the run, the default) or "last" (where training stopped)."""
    model, vocab, _ = RunDir(work_dir).load_model(device, weights)
    return model, vocab
