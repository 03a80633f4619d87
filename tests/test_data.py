import hashlib
import random

import pytest

from wavenet.batches import build_windows, pad_names
from wavenet.data import Vocab, load_words, split_words
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


def test_windows_are_the_lectures_loop(names, vocab):
    """build_windows (tensors) against the lecture's loop, on every name, for three contexts."""
    for block_size in (1, 3, 8):
        X, Y = [], []
        for w in names:
            context = [0] * block_size
            for ch in w + ".":
                ix = vocab.stoi.get(ch, 0)
                X.append(context)
                Y.append(ix)
                context = context[1:] + [ix]
        Xw, Yw = build_windows(names, vocab, block_size)
        assert Xw.tolist() == X and Yw.tolist() == Y


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


def test_encode_all_is_encode_word_by_word(names):
    words = names[:3000] + ["a.b c", "ü", "", "日本"]
    vocab = Vocab.from_words(words)
    ids, lengths = vocab.encode_all(words)
    assert ids.tolist() == [i for w in words for i in vocab.encode(w)]
    assert lengths.tolist() == [len(w) for w in words]
    with pytest.raises(WavenetError, match="characters not in the vocabulary: 'Z', '€'"):
        vocab.encode_all(["ab", "aZ€"])


def test_pad_names_is_the_loop_it_replaced(names, vocab):
    """Each row: block_size boundary ids, the word, right padding 0; targets the word, 0, then -1."""
    words = names[:700:7] + ["a"]
    X, Y = pad_names(words, vocab, 8)
    L = max(map(len, words))
    assert X.shape == (len(words), 8 + L) and Y.shape == (len(words), L + 1)
    for x, y, w in zip(X.tolist(), Y.tolist(), words):
        ids = vocab.encode(w)
        assert x == [0] * 8 + ids + [0] * (L - len(ids))
        assert y == ids + [0] + [-1] * (L - len(ids))
