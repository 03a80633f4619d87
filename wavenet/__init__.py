"""wavenet: character-level WaveNet language models.

The lecture's hierarchical MLP (makemore part 5), the dilated causal convolution it really
is (proven to be the same function), the WaveNet paper's gated residual network, and its
peers (LSTM, GRU, Transformer) under the same contract. See README.md.

    model, vocab = wavenet.load("out")   # the trained model of a run directory (or ensemble), in eval mode
    wavenet.score(model, vocab, ["emma", "xqzt"])   # each word's log-likelihood, nats per character
"""

from .batches import build_windows, pad_names
from .config import ConvConfig, GRUConfig, MLPConfig, RNNConfig, TrainConfig, TransformerConfig, WaveNetConfig
from .data import Vocab, load_words, split_words
from .errors import WavenetError
from .models import GRU, LSTM, ConvWaveNet, Ensemble, HierarchicalMLP, Transformer, WaveNet, build_model
from .rundir import RunDir, load
from .scoring import WordScore, score

__version__ = "0.1.0"
__all__ = ["GRU", "LSTM", "ConvConfig", "ConvWaveNet", "Ensemble", "GRUConfig", "HierarchicalMLP",
           "MLPConfig", "RNNConfig", "RunDir", "TrainConfig", "Transformer", "TransformerConfig", "Vocab",
           "WaveNet", "WaveNetConfig", "WavenetError", "build_model", "build_windows", "load", "load_words",
           "pad_names", "score", "split_words", "WordScore", "__version__"]
