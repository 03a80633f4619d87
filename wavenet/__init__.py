"""wavenet: character-level WaveNet language models.

The lecture's hierarchical MLP (makemore part 5), the dilated causal convolution it really
is (proven to be the same function), and the WaveNet paper's gated residual network. See
README.md.

    model, vocab = wavenet.load("out")   # the trained model of a run directory, in eval mode
"""

from .batches import build_windows, pad_names
from .config import ConvConfig, MLPConfig, TrainConfig, WaveNetConfig
from .data import Vocab, load_words, split_words
from .errors import WavenetError
from .models import ConvWaveNet, HierarchicalMLP, WaveNet, build_model
from .rundir import RunDir, load

__version__ = "0.1.0"
__all__ = ["ConvConfig", "ConvWaveNet", "HierarchicalMLP", "MLPConfig", "RunDir", "TrainConfig", "Vocab",
           "WaveNet", "WaveNetConfig", "WavenetError", "build_model", "build_windows", "load", "load_words",
           "pad_names", "split_words", "__version__"]
