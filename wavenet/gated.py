"""Old import path of the gated WaveNet: the code is in models/wavenet.py."""

from .models.wavenet import Dropout, GatedBlock, RMSNorm, WaveNet, WaveNetCache, parameter_count  # noqa: F401
