"""Words, vocabulary and the lecture's split: a text file becomes ids.

Follows makemore part 5 (Karpathy, "Building makemore Part 5: Building a WaveNet"):
id 0 is the boundary token '.', the sorted characters of the data take ids 1.., the words
are shuffled with `random.seed(42)` and cut at 80% / 90%. What a model is then fed (the
lecture's windows, padded and packed names, batches) is batches.py's.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import DataError, WavenetError

BOUNDARY = "."          # how the boundary token (id 0) is shown
DEFAULT_MAX_LENGTH = 1000  # characters per item; longer lines are refused, not truncated


def load_words(path, max_length: int | None = DEFAULT_MAX_LENGTH) -> list[str]:
    """Read one item per line: surrounding whitespace stripped, blank lines skipped.

    Accepts LF or CRLF line endings and a leading UTF-8 byte order mark. Raises
    `DataError` (one line, naming the file and line) for a missing file, a directory,
    bytes that are not UTF-8, a NUL byte, a line over `max_length` characters, or a
    file with no items. Memory stays bounded by `max_length` even for a huge line.
    """
    path = Path(path)
    if max_length is not None and not (isinstance(max_length, int) and max_length >= 1):
        raise WavenetError(f"max_length must be at least 1, got {max_length}", param="max_length")
    words = []
    with open_text_file(path) as f:
        for lineno, word, error, param in read_lines(f, max_length):
            if error is not None:
                raise DataError(f"{path}, line {lineno}: {error}", param=param)
            if word:
                words.append(word)
    if not words:
        raise DataError(f"{path}: no items (the file is empty or has only blank lines)")
    return words


def open_text_file(path: Path):
    """`path` opened for reading in binary, or a DataError naming what is wrong with it."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a text file")
    try:
        return open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def read_lines(f, max_length: int | None = DEFAULT_MAX_LENGTH) -> Iterator[tuple]:
    """(line number, text, error, param) for each line of the binary file `f`: the text
    stripped of surrounding whitespace ('' for a blank line), or None with an error when the
    line is not UTF-8, holds a NUL byte or runs past `max_length` characters (`param`:
    "max_length" for that one). A leading UTF-8 byte order mark is an encoding marker, not
    data. A line is read ~4 * max_length bytes at a time, so a huge one costs no memory."""
    # A character is at most 4 bytes in UTF-8; +2 leaves room for '\r\n'.
    limit = None if max_length is None else 4 * max_length + 2
    too_long = f"longer than max_length {max_length} characters"
    lineno = 0
    while True:
        raw = f.readline(limit + 1) if limit is not None else f.readline()
        if not raw:
            return
        lineno += 1
        if limit is not None and len(raw) > limit and not raw.endswith(b"\n"):
            yield lineno, None, too_long, "max_length"
            while raw and not raw.endswith(b"\n"):  # only if asked for the next line: skip this one's rest
                raw = f.readline(limit + 1)
            continue
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if b"\0" in raw:
            yield lineno, None, "contains a NUL byte (binary file?)", None
            continue
        try:
            word = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            yield lineno, None, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1})", None
            continue
        if max_length is not None and len(word) > max_length:
            yield lineno, None, too_long, "max_length"
        else:
            yield lineno, word, None, None


class Vocab:
    """Characters <-> ids. Id 0 is the boundary token; data characters take ids 1.. in
    sorted order. Any Unicode character can be data, '.' and ' ' included: the boundary
    is an id, not a character, and '.' is only how it is displayed."""

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        if sorted(set(chars)) != chars or any(len(c) != 1 for c in chars):
            raise WavenetError("vocabulary characters must be distinct single characters in sorted order")
        self.chars = chars
        self.stoi = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def from_words(cls, words: Iterable[str]) -> Vocab:
        return cls(sorted(set("".join(words))))

    def __len__(self) -> int:
        return len(self.chars) + 1

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"Vocab({len(self)} ids: {''.join(self.chars)!r})"

    @property
    def itos(self) -> dict[int, str]:
        """The lecture's itos: {0: '.', 1: 'a', ...}."""
        return {0: BOUNDARY, **{i + 1: c for i, c in enumerate(self.chars)}}

    def unknown(self, text: str) -> list[str]:
        """The characters of `text` outside the vocabulary, sorted, each once."""
        return sorted(set(text) - self.stoi.keys())

    def encode(self, text: str) -> list[int]:
        unknown = self.unknown(text)
        if unknown:
            shown = ", ".join(repr(c) for c in unknown)
            raise WavenetError(f"characters not in the vocabulary: {shown}")
        return [self.stoi[c] for c in text]

    def encode_all(self, words: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Many words at once: (their ids, word after word, (M,); their lengths (B,)), the same
        ids as `encode`, through one lookup table, so a million lines take a fraction of a
        second instead of a million Python calls."""
        points = np.frombuffer("".join(words).encode("utf-32-le"), dtype=np.uint32)
        top = max([ord(c) for c in self.chars] + [int(points.max(initial=0))])
        table = np.full(top + 1, -1, dtype=np.int64)
        table[[ord(c) for c in self.chars]] = np.arange(1, len(self))
        ids = table[points]
        if (ids < 0).any():
            unknown = sorted({chr(p) for p in points[ids < 0].tolist()})
            raise WavenetError(f"characters not in the vocabulary: {', '.join(repr(c) for c in unknown)}")
        return torch.from_numpy(ids), torch.tensor([len(w) for w in words], dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids to text; the boundary id shows as '.'. decode(encode(w)) == w for any word."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self):
                raise WavenetError(f"id {i} is outside the vocabulary (0..{len(self) - 1})")
            out.append(BOUNDARY if i == 0 else self.chars[i - 1])
        return "".join(out)

    def to_dict(self) -> dict:
        """A checkpoint-friendly form (plain strings only)."""
        return {"chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        return cls(list(d["chars"]))


def split_words(words: Sequence[str], seed: int = 42) -> tuple[list[str], list[str], list[str]]:
    """The lecture's split: shuffle with seed 42, cut at int(0.8 n) and int(0.9 n).

    Uses a private random.Random, which shuffles exactly as random.seed(42);
    random.shuffle(words) does, without touching the global random state or the input.
    """
    words = list(words)
    random.Random(seed).shuffle(words)
    n1, n2 = int(0.8 * len(words)), int(0.9 * len(words))
    train, val, test = words[:n1], words[n1:n2], words[n2:]
    if not val or not test:
        raise DataError(f"{len(words)} items are too few to split 80/10/10: the val or test split would be "
                        "empty (need at least 10)")
    return train, val, test


_MOVED = ("build_windows", "window_starts", "pad_names")  # what a model is fed: batches.py


def __getattr__(name: str):
    """The dataset layouts moved to batches.py; `from wavenet.data import pad_names` still works."""
    if name in _MOVED:
        from . import batches
        return getattr(batches, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
