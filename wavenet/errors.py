"""The one exception type for user mistakes.

Anything the user can get wrong (a file, a flag, a checkpoint) raises `WavenetError` with a
one-line message that names the problem. The CLI prints that line to stderr and exits 2; a
traceback means a bug in wavenet, not in the user's input.
"""


class WavenetError(Exception):
    """A user-facing error: bad data, bad flags, a bad checkpoint."""


class DataError(WavenetError):
    """The input text file cannot be used (missing, not UTF-8, empty, ...)."""


class CheckpointError(WavenetError):
    """A checkpoint is missing, corrupt, untrusted or belongs to another model."""
