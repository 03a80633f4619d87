"""`LSTM` and `GRU`: recurrent peers of the convolutional models, under the same contract.

    ids -> embedding (n_embd) -> dropout
    n_layers recurrent layers of n_hidden units, each followed by dropout
    logits = W h + b

A recurrent model reads the whole name so far, so it has no receptive field: each
`pad_names` row opens with one boundary id (`block_size` 1), and output j, read after
X[:, :j + 1], is scored against Y[:, j]. Right padding comes after every real id, so it
cannot change a real output: the padded rows are both the readable reference and the
training path (no packing; `torch.nn.LSTM` runs the time loop in C++). `step` with its
cache (`RecurrentState`: each layer's state) generates one id per call.

The init is torch's own for these layers (every weight and bias uniform in +-1/sqrt(n_hidden),
the head uniform in +-1/sqrt(fan_in), the embedding N(0, 1)), drawn from the given generator.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import GRUConfig, RNNConfig
from ..layers import lm_loss
from .wavenet import Dropout

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class RNN(nn.Module):
    """n_layers recurrent layers over embeddings; see the module docstring. idx (B, T) ->
    logits (B, T, V): output j reads idx[:, :j + 1]."""

    Config = RNNConfig
    kind = "lstm"
    block_size = 1  # the boundary ids that open a `pad_names` row

    def __init__(self, vocab_size: int, n_embd: int = RNNConfig.n_embd, n_hidden: int = RNNConfig.n_hidden,
                 n_layers: int = RNNConfig.n_layers, dropout: float = RNNConfig.dropout,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.config = self.Config(n_embd=n_embd, n_hidden=n_hidden, n_layers=n_layers, dropout=dropout)
        self.vocab_size = vocab_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        cell = CELLS[self.Config.cell]
        # one module per layer, so the dropout between layers is this package's (`Dropout`)
        self.layers = nn.ModuleList(cell(n_embd if i == 0 else n_hidden, n_hidden, batch_first=True)
                                    for i in range(n_layers))
        self.drop = Dropout(dropout)
        self.head = nn.Linear(n_hidden, vocab_size)
        _init_(self, generator)

    def dropouts(self) -> list[Dropout]:
        """The dropouts that config.dropout sets (a recipe's `final_dropout` ramps them)."""
        return [self.drop]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, state: list | None = None):
        """idx (B, T) ids, a `pad_names` row or any prefix of one; targets (B, T), -1 ignored
        -> (logits (B, T, V), mean loss over real targets, or None)."""
        logits, _ = self._run(idx, state)
        return logits, lm_loss(logits, targets)

    def _run(self, idx: torch.Tensor, state: list | None):
        x = self.drop(self.wte(idx))  # (B, T, E)
        states = []
        for i, layer in enumerate(self.layers):
            x, s = layer(x, None if state is None else state[i])
            x = self.drop(x)  # between the layers, and on the last one's outputs
            states.append(s)
        return self.head(x), states

    # ------------------------------------------------------------------ generation

    def new_cache(self, batch_size: int) -> RecurrentState:
        return RecurrentState(self, batch_size)

    def step(self, ix: torch.Tensor, cache: RecurrentState) -> torch.Tensor:
        """Cached generation: one new id per row, ix (B,) -> next logits (B, V). Eval mode."""
        logits, cache.states = self._run(ix[:, None], cache.states)
        return logits[:, 0]


class LSTM(RNN):
    """`RNN` with LSTM layers (the default peer)."""


class GRU(RNN):
    """`RNN` with GRU layers."""

    Config = GRUConfig
    kind = "gru"


class RecurrentState:
    """Each layer's state after the ids fed so far, starting from the boundary id that opens
    every name; `logits` (B, V): the next-id logits there."""

    def __init__(self, model: RNN, batch_size: int):
        with torch.no_grad():
            start = torch.zeros(batch_size, 1, dtype=torch.long, device=model.head.weight.device)
            logits, self.states = model._run(start, None)
        self.logits = logits[:, 0]


def parameter_count(config: RNNConfig, vocab_size: int) -> int:
    """The number of parameters, from the config alone (tested against the model)."""
    E, H, gates = config.n_embd, config.n_hidden, {"lstm": 4, "gru": 3}[config.cell]
    layers = sum(gates * H * (fan_in + H) + 2 * gates * H for fan_in in [E] + [H] * (config.n_layers - 1))
    return vocab_size * E + layers + (H + 1) * vocab_size


def _init_(model: RNN, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        model.wte.weight.copy_(torch.randn(model.wte.weight.shape, generator=generator))
        for layer in model.layers:
            bound = layer.hidden_size ** -0.5
            for p in layer.parameters():
                p.copy_(torch.rand(p.shape, generator=generator) * (2 * bound) - bound)
        bound = model.head.in_features ** -0.5
        for p in (model.head.weight, model.head.bias):
            p.copy_(torch.rand(p.shape, generator=generator) * (2 * bound) - bound)
