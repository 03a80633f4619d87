"""wavenet: character-level WaveNet language models.

The lecture's hierarchical MLP (makemore part 5) and the dilated causal convolution it
really is, proven to be the same function. See README.md.
"""

from .data import Vocab, build_windows, load_words, split_words
from .errors import WavenetError
from .models import HierarchicalMLP, build_model

__version__ = "0.1.0"
__all__ = ["Vocab", "build_windows", "load_words", "split_words", "WavenetError", "HierarchicalMLP",
           "build_model", "__version__"]
