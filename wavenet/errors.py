"""The exception type for user mistakes, and the exit codes, decided here and nowhere else.

Anything the user can get wrong (a file, a parameter, a checkpoint) raises `WavenetError`
with a one-line message that names the problem. The library names its own parameters
(`block_size must be ...`); an error about one parameter carries its name in `param`, and
the CLI swaps in its flag (`--block-size must be ...`). The CLI prints that line to stderr
and exits EXIT_USAGE; a traceback means a bug in wavenet, not in the user's input.
"""

from __future__ import annotations

import re
from typing import Callable

EXIT_OK = 0
EXIT_FAILED = 1          # the run failed, not the user's input (a process of the group died)
EXIT_USAGE = 2           # a user mistake: one line on stderr
EXIT_INTERRUPTED = 130   # Ctrl-C (SIGINT), after saving what can be saved


class WavenetError(Exception):
    """A user-facing error: bad data, bad parameters, a bad checkpoint.

    `param`: the library parameter (or parameters) the message is about, if any, each
    written in the message as in Python. `renamed` replaces the last occurrence of each
    that stands as a word of its own, not inside a path or file name (`runs/max_length`,
    `max_length.txt`), wherever a path stands in the message."""

    exit_code = EXIT_USAGE  # a subclass for failures that are not the user's mistake says otherwise

    def __init__(self, message: str, param: str | tuple[str, ...] | None = None):
        super().__init__(message)
        self.param = param

    def renamed(self, name_of: Callable[[str], str]) -> str:
        """The message with each parameter called `name_of(param)` (e.g. its CLI flag)."""
        text = str(self)
        for param in (self.param,) if isinstance(self.param, str) else self.param or ():
            # not preceded by a word character, '-', '/', '\\' or '.', nor followed by a word
            # character, '-', '/', '\\' or '.' + word character: a path or file name goes on
            hits = list(re.finditer(rf"(?<![\w\-/\\.]){re.escape(param)}(?![\w\-/\\]|\.\w)", text))
            if hits:
                last = hits[-1]
                text = text[:last.start()] + name_of(param) + text[last.end():]
        return text


class DataError(WavenetError):
    """The input text file cannot be used (missing, not UTF-8, empty, ...)."""


class WriteError(WavenetError):
    """A file of the run could not be written (a full disk, a quota, an I/O error). Not the
    user's mistake, so exit 1; the message says what was kept."""

    exit_code = EXIT_FAILED


class CheckpointError(WavenetError):
    """A checkpoint is missing, corrupt, untrusted or belongs to another model."""
