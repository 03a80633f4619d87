"""`wavenet.score` and `wavenet score`: each word's log-likelihood, for every model kind.

The per-word totals are the split loss taken apart (they add up to it), each word's total is
its own (the same scored alone, and the same as a log-softmax read off the model's reference
forward pass by hand), and what the model cannot score is a message in a column, not a crash.
"""

import json
import math

import pytest
import torch

import wavenet
from wavenet.batches import build_windows, pad_names
from wavenet.config import MODEL_CONFIGS, model_config
from wavenet.data import Vocab
from wavenet.evaluate import split_loss

WORDS = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "charlotte", "amelia", "jo", "x", "emma",
         "bob", "alexandrina"]
VOCAB = Vocab.from_words(WORDS)
SHAPES = {"mlp": dict(block_size=8, n_embd=4, n_hidden=8), "conv": dict(block_size=8, n_embd=4, n_hidden=8),
          "wavenet": dict(n_layers=2, n_cycles=2, n_residual=6, n_skip=10),
          "lstm": dict(n_embd=5, n_hidden=7, n_layers=2), "gru": dict(n_embd=5, n_hidden=7, n_layers=1),
          "transformer": dict(n_embd=8, n_head=2, n_layers=2, n_positions=14)}
KINDS = list(MODEL_CONFIGS)


def make(kind):
    """A float64 model of `kind` whose every weight (and running statistic) is random."""
    g = torch.Generator().manual_seed(3)
    model = wavenet.build_model(model_config(kind, **SHAPES[kind]), len(VOCAB), g).double()
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.add_(0.3 * torch.randn(t.shape, generator=g, dtype=t.dtype)).abs_()
    return model.eval()


def by_hand(model, word: str) -> float:
    """log p(word) from the model's plain forward pass: the lecture's windows for the MLP,
    one padded row for every other kind, log-softmax read at each target."""
    if model.kind == "mlp":
        X, Y = build_windows([word], VOCAB, model.block_size)
        logits = model(X)[0]
    else:
        X, Y = pad_names([word], VOCAB, model.block_size)
        logits, Y = model(X)[0][0], Y[0]
    return torch.log_softmax(logits, -1)[torch.arange(len(Y)), Y].sum().item()


def test_kinds_are_all_covered():
    assert set(SHAPES) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_word_totals_add_up_to_the_split_loss(kind):
    model = make(kind)
    scores = wavenet.score(model, VOCAB, WORDS, max_positions=17)  # many batches: words cut across them
    assert [s.word for s in scores] == WORDS and all(s.error is None for s in scores)
    assert [s.targets for s in scores] == [len(w) + 1 for w in WORDS]
    total = sum(s.log_likelihood for s in scores)
    n = sum(len(w) + 1 for w in WORDS)
    assert abs(-total - split_loss(model, WORDS, VOCAB) * n) < 1e-9


@pytest.mark.parametrize("kind", KINDS)
def test_each_word_gets_its_own_total(kind):
    model = make(kind)
    together = wavenet.score(model, VOCAB, WORDS, max_positions=17)
    for word, s in zip(WORDS, together):
        alone = wavenet.score(model, VOCAB, [word])[0]
        assert abs(s.log_likelihood - alone.log_likelihood) < 1e-12
        assert abs(s.log_likelihood - by_hand(model, word)) < 1e-11
        assert s.nats_per_char == pytest.approx(-s.log_likelihood / (len(word) + 1), rel=1e-15)
        assert s.perplexity == pytest.approx(math.exp(s.nats_per_char), rel=1e-15)
    assert len({round(s.log_likelihood, 9) for s in together}) == len(set(WORDS))  # it tells them apart


@pytest.mark.parametrize("kind", KINDS)
def test_what_cannot_be_scored_is_a_message(kind):
    model = make(kind)
    words = ["emma", "Emma", "", "zq!", "ava"]
    scores = wavenet.score(model, VOCAB, words)
    assert scores[1].error == "not in the model's vocabulary: 'E'"
    assert scores[2].error == "empty: nothing to score"
    assert scores[3].error == "not in the model's vocabulary: '!', 'q', 'z'"
    for s in (scores[1], scores[2], scores[3]):
        assert s.log_likelihood is s.nats_per_char is s.perplexity is None
    clean = wavenet.score(model, VOCAB, ["emma", "ava"])
    assert [scores[0].log_likelihood, scores[4].log_likelihood] == [c.log_likelihood for c in clean]


def test_a_line_longer_than_the_transformer_reads():
    model = make("transformer")  # 14 positions: 13 characters and the end
    scores = wavenet.score(model, VOCAB, ["alexandrinaaa", "alexandrinaaaa"])
    assert scores[0].error is None
    assert scores[1].error == "14 characters, more than the 13 this transformer reads"
    for kind in ("conv", "wavenet", "lstm"):  # no such limit: a line longer than the receptive field
        long, model = "alexandrina" * 4, make(kind)
        assert abs(wavenet.score(model, VOCAB, [long])[0].log_likelihood - by_hand(model, long)) < 1e-11


def test_the_model_keeps_its_mode():
    model = make("conv").train()
    wavenet.score(model, VOCAB, WORDS)
    assert model.training


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, names):
    """A trained conv run (40 steps on 300 names)."""
    from wavenet.cli import main
    root = tmp_path_factory.mktemp("score")
    data = root / "some.txt"
    data.write_text("\n".join(names[:300]) + "\n", encoding="utf-8")
    flags = ["--max-steps", "40", "--eval-interval", "10", "--batch-size", "8", "--n-embd", "4",
             "--n-hidden", "8"]
    assert main(["train", "-o", str(root / "run"), "-i", str(data), *flags, "--no-progress", "-n", "0"]) == 0
    return root / "run"


def test_score_prints_a_row_per_line(run_dir, tmp_path, cli):
    lines = ["emma", "  ava  ", "", "Zoe", "olivia"]
    f = tmp_path / "in.txt"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = cli("score", "-o", run_dir, f)
    assert code == 0
    rows = [r.split("\t") for r in out.splitlines()]
    assert rows[0] == ["line", "log_likelihood", "targets", "nats_per_char", "perplexity", "error", "text"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"]
    assert [r[6] for r in rows[1:]] == ["emma", "ava", "", "Zoe", "olivia"]
    model, vocab = wavenet.load(run_dir)
    want = wavenet.score(model, vocab, ["emma", "ava", "olivia"])
    for row, s in zip((rows[1], rows[2], rows[5]), want):
        assert float(row[1]) == pytest.approx(s.log_likelihood, abs=1e-6)
        assert int(row[2]) == s.targets and row[5] == ""
        assert float(row[3]) == pytest.approx(s.nats_per_char, abs=1e-6)
        assert float(row[4]) == pytest.approx(s.perplexity, rel=1e-4)
    assert rows[3][1:6] == ["", "", "", "", "empty: nothing to score"]
    assert rows[4][1:6] == ["", "", "", "", "not in the model's vocabulary: 'Z'"]
    assert err == "wavenet: note: 2 lines could not be scored (see the error column)\n"


def test_score_json_sorted_from_stdin(run_dir, cli, monkeypatch):
    import io
    import sys
    text = "emma\nxqxq\nava\n\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    code, out, _ = cli("score", "-o", run_dir, "--format", "json", "--sort", "--weights", "last")
    assert code == 0
    records = [json.loads(r) for r in out.splitlines()]
    model, vocab = wavenet.load(run_dir, weights="last")
    want = {s.word: s for s in wavenet.score(model, vocab, ["emma", "xqxq", "ava"])}
    ranked = sorted(want.values(), key=lambda s: s.nats_per_char)
    assert [r["text"] for r in records] == [s.word for s in ranked] + [""]  # the unscorable line last
    assert [r["line"] for r in records[:3]] == [{"emma": 1, "xqxq": 2, "ava": 3}[s.word] for s in ranked]
    for r in records[:3]:
        assert r["log_likelihood"] == pytest.approx(want[r["text"]].log_likelihood, rel=1e-12)
        assert r["error"] is None
    assert records[3]["error"] == "empty: nothing to score" and records[3]["log_likelihood"] is None


def test_unreadable_lines_are_rows_too(run_dir, tmp_path, cli):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"emma\n\xff\xfeava\n" + b"a" * 5000 + b"\nava\x00\nava\n")
    code, out, _ = cli("score", "-o", run_dir, f, "--max-length", "100")
    assert code == 0
    rows = [r.split("\t") for r in out.splitlines()[1:]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert rows[1][5] == "not valid UTF-8 (byte 0xff at byte 1)"
    assert rows[2][5] == "longer than max_length 100 characters"
    assert rows[3][5] == "contains a NUL byte (binary file?)"
    assert (rows[0][5], rows[0][6]) == (rows[4][5], "emma") and (rows[4][5], rows[4][6]) == ("", "ava")


@pytest.mark.parametrize("argv, message", [
    (["score", "-o", "{tmp}/nothing", "{file}"], "nothing: no checkpoint there"),
    (["score", "-o", "{run}", "{tmp}/missing.txt"], "missing.txt: no such file"),
    (["score", "-o", "{run}", "{tmp}"], "is a directory, not a text file"),
    (["score", "-o", "{run}", "{file}", "--format", "xml"], "argument --format: invalid choice: 'xml'"),
    (["score", "-o", "{run}", "{file}", "--max-length", "0"], "--max-length must be at least 1, got 0"),
    (["score", "-o", "{run}", "{file}", "--weights", "worst"], "argument --weights: invalid choice"),
])
def test_score_mistakes_are_one_line(argv, message, run_dir, tmp_path, cli, one_line_error):
    f = tmp_path / "in.txt"
    f.write_text("emma\n", encoding="utf-8")
    code, _, err = cli(*[a.format(tmp=tmp_path, file=f, run=run_dir) for a in argv])
    one_line_error(code, err, message)
