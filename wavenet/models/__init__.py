"""The models, one file per family, and one way to build any of them.

    tree.py        the lecture's tree: HierarchicalMLP (one window per target) and
                   ConvWaveNet (the same function as dilated causal convolutions)
    tree_fused.py  ConvWaveNet's training step on packed names, forward and backward by hand
    native.py      bn_tanh.c (that step's BatchNorm in C), built at first use; torch where it cannot be
    wavenet.py     WaveNet: the paper's gated residual network
    cache.py       RingCache: the inference state of cached generation, for both conv models
    ensemble.py    Ensemble: trained models (one kind or several) as the mean of their distributions
    recurrent.py   LSTM and GRU: the recurrent peers
    transformer.py Transformer: the attention peer (GPT-2's block), with its KV cache

Every model takes `model(idx, targets=None) -> (logits, loss)` on `pad_names` rows and
generates with `step(ix, cache)` (`cache = model.new_cache(batch_size)`), except the MLP,
which takes one window per target; the convolutional ones also take a
`batches.PackedNames` batch (their fast path). The peers (lstm, gru, transformer) read the
whole name so far: their rows open with one boundary id (`block_size` 1).
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn as nn

from ..config import config_from_record
from ..errors import WavenetError
from .cache import RingCache
from .ensemble import Ensemble, EnsembleCache
from .recurrent import GRU, LSTM, RNN, RecurrentState
from .transformer import KVCache, Transformer
from .tree import ConvCache, ConvWaveNet, HierarchicalMLP, kernel_to_linear, linear_to_kernel
from .wavenet import GatedBlock, WaveNet, WaveNetCache, parameter_count

MODELS = {"mlp": HierarchicalMLP, "conv": ConvWaveNet, "wavenet": WaveNet, "lstm": LSTM, "gru": GRU,
          "transformer": Transformer}

__all__ = ["GRU", "LSTM", "MODELS", "RNN", "ConvCache", "ConvWaveNet", "Ensemble", "EnsembleCache",
           "GatedBlock", "HierarchicalMLP", "KVCache", "RecurrentState", "RingCache", "Transformer",
           "WaveNet", "WaveNetCache", "build_model", "kernel_to_linear", "linear_to_kernel",
           "parameter_count"]


def build_model(config, vocab_size: int | None = None, generator: torch.Generator | None = None) -> nn.Module:
    """A fresh model from its config (`MLPConfig`, `ConvConfig`, `WaveNetConfig`, `RNNConfig`,
    `GRUConfig`, `TransformerConfig`) and vocabulary size,
    or from a checkpoint's record of both (a dict, see `config.model_record`)."""
    if isinstance(config, dict):
        config, vocab_size = config_from_record(config)
    if vocab_size is None:
        raise WavenetError("build_model needs the vocabulary size", param="vocab_size")
    return MODELS[config.kind](vocab_size, **asdict(config), generator=generator)
