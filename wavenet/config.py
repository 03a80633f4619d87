"""Configs: one frozen dataclass per model kind, and one for the training recipe.

Every field's default lives here and nowhere else. The models' constructors, the CLI's
flags and help text, the checkpoint record and the benchmark are all built from these
classes. Kinds need not share fields: the CLI offers the union of the kinds' fields as flags
and refuses one that the chosen kind does not have. A field's metadata holds its help text
(and, where useful, a metavar) for the CLI.

The vocabulary size is not in a model config: it comes from the data, not from the user.
A checkpoint records both (`model_record`), and `config_from_record` reads them back.

No torch here: the CLI reads these classes before torch is imported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import ClassVar

from .errors import WavenetError


def check_block_size(block_size: int) -> int:
    """Number of fusion levels, log2(block_size); block_size must be a power of two >= 2."""
    if not isinstance(block_size, int) or block_size < 2 or block_size & (block_size - 1):
        raise WavenetError(f"block_size must be a power of two >= 2 (2, 4, 8, 16, ...), got {block_size}",
                           param="block_size")
    return int(math.log2(block_size))


def _at_least(config, name: str, low) -> None:
    value = getattr(config, name)
    if not value >= low:  # NaN fails too
        raise WavenetError(f"{name} must be at least {low}, got {value}", param=name)


def _check_dropout(config, name: str = "dropout") -> None:
    value = getattr(config, name)
    if not 0 <= value < 1:
        raise WavenetError(f"{name} must be at least 0 and below 1, got {value}", param=name)


def _help(text: str, metavar: str | None = None) -> dict:
    return {"help": text, "metavar": metavar}


def flag_fields(config) -> list:
    """The fields of a config class (or instance) that are command-line flags: all but those
    the package writes itself (metadata flag=False)."""
    return [f for f in fields(config) if f.metadata.get("flag", True)]


# ----------------------------------------------------------------------------- models

@dataclass(frozen=True)
class TreeConfig:
    """The lecture's tree: block_size ids of context, fused pairwise in log2(block_size)
    levels of n_hidden units, over n_embd-wide character embeddings."""

    kind: ClassVar[str] = ""
    block_size: int = field(default=8, metadata=_help("context length, a power of two"))
    n_embd: int = field(default=24, metadata=_help("embedding width"))
    n_hidden: int = field(default=128, metadata=_help("hidden width"))

    def __post_init__(self):
        check_block_size(self.block_size)
        _at_least(self, "n_embd", 1)
        _at_least(self, "n_hidden", 1)


@dataclass(frozen=True)
class MLPConfig(TreeConfig):
    """`HierarchicalMLP`: the tree over one window per target (the lecture's model)."""

    kind: ClassVar[str] = "mlp"


@dataclass(frozen=True)
class ConvConfig(TreeConfig):
    """`ConvWaveNet`: the same tree as dilated causal convolutions over whole names."""

    kind: ClassVar[str] = "conv"


NORMS = ("none", "layer", "rms")


@dataclass(frozen=True)
class WaveNetConfig:
    """`WaveNet`: gated residual blocks of kernel-2 dilated causal convolutions, dilations
    1, 2, ..., 2**(n_layers - 1), repeated n_cycles times; a skip stream from every block.
    Its receptive field, and so its block_size, is 1 + n_cycles * (2**n_layers - 1)."""

    kind: ClassVar[str] = "wavenet"
    n_layers: int = field(default=3, metadata=_help("blocks per dilation cycle (dilations 1, 2, 4, ...)"))
    n_cycles: int = field(default=3, metadata=_help("dilation cycles"))
    n_residual: int = field(default=128, metadata=_help("residual (and gate) channels"))
    n_skip: int = field(default=384, metadata=_help("skip channels"))
    dropout: float = field(default=0.1, metadata=_help("dropout probability in training", "P"))
    norm: str = field(default="none", metadata=_help(
        "per-position normalisation of each block's input: none, layer or rms", "KIND"))
    embd_dropout: float = field(default=0.0, metadata=_help(
        "dropout on the embeddings, the residual stream's input", "P"))
    head_layers: int = field(default=1, metadata=_help(
        "the output head: 2, the paper's two 1x1 convolutions (relu, skip -> skip, relu, -> vocabulary); "
        "1, one (relu, skip -> vocabulary)", "N"))
    tar: float = field(default=0.0, metadata=_help(
        "temporal activation regularisation in training: adds B times the mean squared change of the "
        "head's input, relu(skip), from each character's position to the one before it (Merity et al. "
        "2017); 0: off", "B"))

    def __post_init__(self):
        for name in ("n_layers", "n_cycles", "n_residual", "n_skip"):
            _at_least(self, name, 1)
        if not 0 <= self.tar < math.inf:
            raise WavenetError(f"tar must be a finite number at least 0, got {self.tar}", param="tar")
        _check_dropout(self)
        _check_dropout(self, "embd_dropout")
        if self.head_layers not in (1, 2):
            raise WavenetError(f"head_layers must be 1 or 2, got {self.head_layers}", param="head_layers")
        if self.norm not in NORMS:
            raise WavenetError(f"norm must be one of {', '.join(NORMS)}, got '{self.norm}'", param="norm")

    @property
    def dilations(self) -> list[int]:
        return [2**i for _ in range(self.n_cycles) for i in range(self.n_layers)]

    @property
    def block_size(self) -> int:
        """The receptive field: the number of ids each prediction sees."""
        return 1 + sum(self.dilations)


@dataclass(frozen=True)
class RNNConfig:
    """`RNN`: a peer of the convolutions. n_layers recurrent layers (LSTM) of n_hidden units over
    n_embd-wide embeddings, a linear head on the last layer; dropout on the embeddings,
    between the layers and on the last layer's outputs. It reads the whole name so far:
    no receptive field, so its block_size is the one boundary id that opens each name."""

    kind: ClassVar[str] = "lstm"
    cell: ClassVar[str] = "lstm"
    n_embd: int = field(default=256, metadata=_help("embedding width"))
    n_hidden: int = field(default=256, metadata=_help("hidden width"))
    n_layers: int = field(default=2, metadata=_help("layers"))
    dropout: float = field(default=0.45, metadata=_help("dropout probability in training", "P"))
    block_size: ClassVar[int] = 1

    def __post_init__(self):
        for name in ("n_embd", "n_hidden", "n_layers"):
            _at_least(self, name, 1)
        _check_dropout(self)


@dataclass(frozen=True)
class GRUConfig(RNNConfig):
    """`RNN` with GRU layers instead of LSTM layers; the same fields."""

    kind: ClassVar[str] = "gru"
    cell: ClassVar[str] = "gru"


@dataclass(frozen=True)
class TransformerConfig:
    """`Transformer`: a peer of the convolutions, a decoder-only, pre-LayerNorm Transformer
    (GPT-2's block): n_layers blocks of n_head-headed causal self-attention and a 4x MLP, at
    n_embd channels, learned positions for up to n_positions ids (the boundary id and the
    name's characters: a line of up to n_positions - 1 characters)."""

    kind: ClassVar[str] = "transformer"
    n_embd: int = field(default=128, metadata=_help("embedding width"))
    n_head: int = field(default=4, metadata=_help("attention heads (they divide n_embd)"))
    n_layers: int = field(default=4, metadata=_help("layers"))
    n_positions: int = field(default=32, metadata=_help("longest sequence: the boundary id and up to "
                                                        "n_positions - 1 characters"))
    dropout: float = field(default=0.2, metadata=_help("dropout probability in training", "P"))
    block_size: ClassVar[int] = 1

    def __post_init__(self):
        for name in ("n_embd", "n_head", "n_layers"):
            _at_least(self, name, 1)
        _at_least(self, "n_positions", 2)
        if self.n_embd % self.n_head:
            raise WavenetError(f"n_head {self.n_head} does not divide n_embd {self.n_embd}", param="n_head")
        _check_dropout(self)


MODEL_CONFIGS: dict[str, type] = {c.kind: c for c in (ConvConfig, MLPConfig, WaveNetConfig, RNNConfig,
                                                       GRUConfig, TransformerConfig)}
PEERS = ("lstm", "gru", "transformer")  # the kinds that read the whole name so far (no receptive field)
DEFAULT_KIND = "conv"


def model_config(kind: str, **given):
    """The config of model `kind` with the `given` fields changed from their defaults.
    A field the kind does not have is an error naming it, not silently dropped."""
    if kind not in MODEL_CONFIGS:
        raise WavenetError(f"unknown model kind '{kind}' (choose from {', '.join(MODEL_CONFIGS)})",
                           param="kind")
    cls = MODEL_CONFIGS[kind]
    foreign = [name for name in given if name not in {f.name for f in fields(cls)}]
    if foreign:
        raise WavenetError(f"{foreign[0]} does not apply to a '{kind}' model", param=foreign[0])
    return cls(**given)


def model_record(config, vocab_size: int) -> dict:
    """What a checkpoint stores of a model's shape: plain data, kind first."""
    return {"kind": config.kind, "vocab_size": vocab_size, **asdict(config)}


def config_from_record(record: dict):
    """(config, vocab_size) from a checkpoint's record, as written by `model_record` (and by
    every earlier version: the record's keys have not changed)."""
    record = dict(record)
    kind, vocab_size = record.pop("kind", None), record.pop("vocab_size", None)
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise WavenetError(f"model record has no valid vocab_size ({vocab_size!r})")
    return model_config(kind, **record), vocab_size


# ----------------------------------------------------------------------------- training

SCHEDULES, OPTIMIZERS, DTYPES = ("step", "cosine"), ("sgd", "adamw"), ("float32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe. The defaults are the lecture's: SGD, 200,000 steps of 32 random
    windows, learning rate 0.1 then 0.01 after 75% of the steps, seed 42. The gated
    WaveNet's recipe adds AdamW with weight decay, a linear warm-up, cosine decay and
    gradient clipping (RECIPES below)."""

    max_steps: int = field(default=200_000, metadata=_help("optimisation steps"))
    batch_size: int = field(default=32, metadata=_help(
        "windows (mlp) or whole names (every other kind) per step"))
    learning_rate: float = field(default=0.1, metadata=_help("(peak) learning rate"))
    decay_at: float = field(default=0.75, metadata=_help(
        "step schedule: the learning rate drops tenfold after this fraction of the steps", "FRACTION"))
    schedule: str = field(default="step", metadata=_help(
        "step (tenfold drop at decay_at) or cosine (down to final_lr by the last step)", "KIND"))
    final_lr: float = field(default=0.1, metadata=_help(
        "cosine: the learning rate at the last step, as a fraction of the peak", "FRACTION"))
    warmup: int = field(default=0, metadata=_help("steps of linear learning-rate warm-up", "STEPS"))
    optimizer: str = field(default="sgd", metadata=_help("sgd (plain, the lecture's) or adamw", "KIND"))
    weight_decay: float = field(default=0.0, metadata=_help("adamw: decoupled weight decay of the matrices"))
    grad_clip: float = field(default=0.0, metadata=_help("clip the gradient's norm to this (0: off)", "NORM"))
    seed: int = field(default=42, metadata=_help("seeds the init, the batches and the samples"))
    eval_interval: int = field(default=10_000, metadata=_help("steps between val loss and checkpoint"))
    dtype: str = field(default="float32", metadata=_help(
        "float32, or bf16: the training step's forward pass under bfloat16 autocast (for CUDA; the "
        "weights, the optimizer and evaluation stay float32)", "DTYPE"))
    group_by_length: int = field(default=0, metadata=_help(
        "conv: length-sort names within chunks of K batches (less padding, worse BatchNorm)", "K"))
    ema: float = field(default=0.0, metadata=_help(
        "average the weights: after each step, average += (1 - d) (weights - average), d = min(EMA, "
        "(1 + step) / (10 + step)); val, the best weights and the last are the average's (0: off)", "DECAY"))
    time_budget: float = field(default=0.0, metadata=_help(
        "train for this many minutes instead of max_steps: the run measures its step rate, fits the "
        "steps and the schedule to the clock and re-fits them at each evaluation (recorded, so --resume "
        "is exact); evaluation is not counted (0: off)", "MINUTES"))
    final_dropout: float | None = field(default=None, metadata=dict(_help(
        "ramp the model's dropout linearly from its --dropout where the learning rate starts to decay "
        "to this at the last step (follows a time budget's re-fits; none: fixed)", "P"), parse=float))
    # not a flag: written by a time budget when it re-fits the steps (train.refit_to_budget)
    schedule_knots: tuple = field(default=(), metadata={"flag": False})

    def __post_init__(self):
        _at_least(self, "max_steps", 1)
        _at_least(self, "eval_interval", 1)
        # ((step, progress, end), ...): a checkpoint's record may hold them as lists
        object.__setattr__(self, "schedule_knots", tuple((int(k), float(p), int(e))
                                                         for k, p, e in self.schedule_knots))
        if not self.batch_size >= 2:
            raise WavenetError("batch_size must be at least 2 (BatchNorm needs a batch), "
                               f"got {self.batch_size}", param="batch_size")
        if not 0 < self.learning_rate < float("inf"):
            raise WavenetError(f"learning_rate must be a positive number, got {self.learning_rate}",
                               param="learning_rate")
        if not 0 <= self.decay_at <= 1:
            raise WavenetError(f"decay_at must be a fraction between 0 and 1, got {self.decay_at}",
                               param="decay_at")
        if not 0 <= self.final_lr <= 1:
            raise WavenetError(f"final_lr must be a fraction between 0 and 1, got {self.final_lr}",
                               param="final_lr")
        if not 0 <= self.ema < 1:
            raise WavenetError(f"ema must be at least 0 and below 1, got {self.ema}", param="ema")
        if self.final_dropout is not None:
            _check_dropout(self, "final_dropout")
        _at_least(self, "group_by_length", 0)
        _at_least(self, "warmup", 0)
        _at_least(self, "grad_clip", 0)
        _at_least(self, "weight_decay", 0)
        if not 0 <= self.time_budget < float("inf"):
            raise WavenetError(f"time_budget must be a number of minutes, 0 or more, got {self.time_budget}",
                               param="time_budget")
        for name, choices in (("schedule", SCHEDULES), ("optimizer", OPTIMIZERS), ("dtype", DTYPES)):
            if getattr(self, name) not in choices:
                raise WavenetError(f"{name} must be one of {', '.join(choices)}, got '{getattr(self, name)}'",
                                   param=name)
        if self.weight_decay and self.optimizer == "sgd":
            raise WavenetError("weight_decay needs optimizer adamw (the lecture's SGD has none)",
                               param="weight_decay")


# The default recipe of each model kind. The MLP's is the lecture's. The conv's batch of 64
# whole names scores ~455 targets a step, so it needs far fewer steps (8,000: 20 epochs) and
# takes a higher learning rate; the low rate runs only for the last 10%, chosen by val loss
# among the runs in docs/whole-name-training.md.
# AdamW, warm-up, cosine, clipping, 64 whole names a step: the base of the other kinds' recipes
_ADAMW = TrainConfig(batch_size=64, learning_rate=3e-3, schedule="cosine", warmup=500, optimizer="adamw",
                     weight_decay=0.1, grad_clip=1.0)
RECIPES: dict[str, TrainConfig] = {
    "conv": TrainConfig(max_steps=8_000, batch_size=64, learning_rate=0.3, decay_at=0.9, eval_interval=800),
    "mlp": TrainConfig(),
    # the WaveNet's: val <= 1.92 after 97 s of training on 2 cores of an Intel Xeon, its dropout
    # ramped from the model's 0.1 to 0.3 (docs/gated-wavenet.md)
    "wavenet": replace(_ADAMW, max_steps=7_000, eval_interval=700, final_lr=0.0, ema=0.998, weight_decay=0.3,
                       final_dropout=0.3),
}
# The peers, tuned by val for each (docs/peers.md): cosine to a tenth over 16,000 steps, the
# Transformer at a lower peak rate.
RECIPES["lstm"] = replace(_ADAMW, max_steps=16_000, eval_interval=1_600)
RECIPES["gru"] = replace(RECIPES["lstm"])
RECIPES["transformer"] = replace(_ADAMW, learning_rate=2e-3, max_steps=16_000, eval_interval=1_600)
