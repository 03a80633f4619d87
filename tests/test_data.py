import hashlib
import random

import pytest

from wavenet.data import Vocab, build_windows, load_words, split_words
from wavenet.errors import DataError, WavenetError


def test_names_file_is_the_lectures(names, names_path):
    expected = (names_path.parent / "SHA256SUMS").read_text().split()[0]
    assert hashlib.sha256(names_path.read_bytes()).hexdigest() == expected
    assert len(names) == 32_033


def test_vocab_is_the_lectures_stoi(vocab):
    assert len(vocab) == 27
    assert vocab.stoi == {c: i + 1 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}
    assert vocab.itos[0] == "." and vocab.itos[1] == "a" and vocab.itos[26] == "z"
    assert vocab.encode("emma") == [5, 13, 13, 1]
    assert vocab.decode([5, 13, 13, 1, 0]) == "emma."


def test_split_and_windows_are_the_lectures(names, vocab):
    state = random.getstate()
    original = list(names)
    train, val, test = split_words(names, seed=42)
    assert random.getstate() == state, "split_words must not touch the global random state"
    assert names == original, "split_words must not shuffle its input in place"
    # The lecture: random.seed(42); random.shuffle(words); cut at int(0.8n), int(0.9n).
    words = list(names)
    random.seed(42)
    random.shuffle(words)
    random.setstate(state)
    assert (train, val, test) == (words[:25626], words[25626:28829], words[28829:])
    sizes = [build_windows(s, vocab, 8)[0].shape for s in (train, val, test)]
    assert sizes == [(182625, 8), (22655, 8), (22866, 8)]
    X, Y = build_windows(train, vocab, 8)
    shown = [f"{vocab.decode(x.tolist())} --> {vocab.itos[int(y)]}" for x, y in zip(X[:8], Y[:8])]
    assert shown == ["........ --> y", ".......y --> u", "......yu --> h", ".....yuh --> e",
                     "....yuhe --> n", "...yuhen --> g", "..yuheng --> .", "........ --> d"]
    assert train[:2] == ["yuheng", "diondre"]


def test_windows_count_every_target(vocab):
    X, Y = build_windows(["ab", "c"], Vocab.from_words(["ab", "c"]), 4)
    assert X.tolist() == [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 2], [0, 0, 0, 0], [0, 0, 0, 3]]
    assert Y.tolist() == [1, 2, 0, 3, 0]


def test_any_unicode_character_is_data():
    words = ["a.b", "jean luc", "zoë", "日本", "tab\there"]
    vocab = Vocab.from_words(words)
    assert len(vocab) == len(set("".join(words))) + 1
    for w in words:
        ids = vocab.encode(w)
        assert 0 not in ids, "a data character must never share the boundary id"
        assert vocab.decode(ids) == w
    assert Vocab.from_dict(vocab.to_dict()) == vocab


def test_unknown_characters_are_listed(vocab):
    with pytest.raises(WavenetError, match=r"'1', 'É'"):
        vocab.encode("abÉ1")


def test_load_words_strips_and_skips(tmp_path):
    p = tmp_path / "w.txt"
    p.write_bytes("\ufeffanna \r\n\r\n  bob\r\n\t\nnew york\n".encode("utf-8"))
    assert load_words(p) == ["anna", "bob", "new york"]


@pytest.mark.parametrize("content, message", [
    (b"", "no items"),
    (b"  \n\t\n \r\n", "no items"),
    (b"anna\nb\xffb\n", r"line 2: not valid UTF-8"),
    (b"anna\nbob\ncar\x00l\n", r"line 3: contains a NUL byte"),
])
def test_load_words_errors(tmp_path, content, message):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_words(p)


def test_load_words_missing_and_directory(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_words(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="is a directory"):
        load_words(tmp_path)


def test_load_words_refuses_a_huge_line(tmp_path):
    p = tmp_path / "huge.txt"
    p.write_bytes(b"anna\n" + b"x" * 5_000_000 + b"\nbob\n")
    with pytest.raises(DataError, match=r"line 2: longer than max_length 1000"):
        load_words(p, max_length=1000)
    assert len(load_words(p, max_length=None)[1]) == 5_000_000


def test_too_few_words_to_split():
    with pytest.raises(DataError, match="too few"):
        split_words(["a", "b", "c", "d", "e"])
