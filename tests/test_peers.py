"""The peers (LSTM, GRU, Transformer): the contract the other kinds keep (causal reference
forward on `pad_names` rows, padding that changes nothing, cached generation equal to the
full forward, the split's loss), and the whole pipeline through the CLI."""

import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from wavenet.batches import eval_batches, make_batches, pad_names
from wavenet.config import RECIPES, GRUConfig, RNNConfig, TransformerConfig, model_config
from wavenet.data import Vocab
from wavenet.evaluate import split_loss
from wavenet.models import GRU, LSTM, Transformer, build_model, recurrent, transformer
from wavenet.rundir import RunDir
from wavenet.sample import generate

WORDS = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "charlotte", "amelia", "jo", "x"]
VOCAB = Vocab.from_words(WORDS)
SMALL = {"lstm": dict(n_embd=5, n_hidden=7, n_layers=2), "gru": dict(n_embd=5, n_hidden=7, n_layers=3),
         "transformer": dict(n_embd=8, n_head=2, n_layers=2, n_positions=12)}
KINDS = list(SMALL)


def make(kind, dtype=torch.float64, seed=0, dropout=0.0):
    g = torch.Generator().manual_seed(seed)
    m = build_model(model_config(kind, dropout=dropout, **SMALL[kind]), len(VOCAB), g).to(dtype)
    with torch.no_grad():  # biases and norm gains away from their init, so each one matters
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=dtype))
    return m


@pytest.mark.parametrize("config, cls, count", [
    (RNNConfig(), LSTM, recurrent.parameter_count), (RNNConfig(n_embd=3, n_hidden=5, n_layers=3), LSTM,
                                                     recurrent.parameter_count),
    (GRUConfig(), GRU, recurrent.parameter_count), (GRUConfig(n_embd=9, n_hidden=4, n_layers=1), GRU,
                                                    recurrent.parameter_count),
    (TransformerConfig(), Transformer, transformer.parameter_count),
    (TransformerConfig(n_embd=12, n_head=3, n_layers=1, n_positions=7), Transformer,
     transformer.parameter_count),
])
def test_parameter_count_from_the_config(config, cls, count):
    model = cls(27, **asdict(config))
    assert sum(p.numel() for p in model.parameters()) == count(config, 27)


def test_default_shapes_and_first_loss():
    """The issue's LSTM has 1,066,523 parameters on names; every peer's first loss is close
    to ln(27), a uniform guess."""
    assert recurrent.parameter_count(RNNConfig(), 27) == 1_066_523
    X, Y = pad_names(WORDS, VOCAB, 1)
    for kind in KINDS:
        m = build_model(model_config(kind), 27, torch.Generator().manual_seed(42))
        _, loss = m.train()(X, Y)
        assert abs(loss.item() - math.log(27)) < 0.3, kind


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("training", [False, True])
def test_causal_exactly(kind, training):
    """Changing ids after position t changes no output at or before t; in training mode with
    dropout, given the same random stream."""
    m = make(kind, dropout=0.3 if training else 0.0).train(training)
    X, _ = pad_names(WORDS, VOCAB, 1)
    g = torch.Generator().manual_seed(1)
    for t in range(X.shape[1] - 1):
        changed = X.clone()
        changed[:, t + 1:] = torch.randint(0, len(VOCAB), changed[:, t + 1:].shape, generator=g)
        torch.manual_seed(3)
        a = m(X)[0]
        torch.manual_seed(3)
        b = m(changed)[0]
        assert torch.equal(a[:, :t + 1], b[:, :t + 1]), t
        assert not torch.equal(a[:, t + 1:], b[:, t + 1:]), t  # the change reaches later outputs


@pytest.mark.parametrize("kind", KINDS)
def test_padding_changes_nothing(kind):
    """A name's logits alone and in a batch padded to a longer name agree (float64, 1e-12)."""
    m = make(kind).eval()
    X, Y = pad_names(WORDS, VOCAB, 1)
    batch = m(X)[0]
    for i, w in enumerate(WORDS):
        Xi, Yi = pad_names([w], VOCAB, 1)
        alone = m(Xi)[0][0]
        assert torch.allclose(batch[i, :len(w) + 1], alone, rtol=0, atol=1e-12), w
        assert torch.equal(Y[i, :len(w) + 1], Yi[0])


@pytest.mark.parametrize("kind", KINDS)
def test_cached_generation_equals_the_full_forward_at_every_step(kind):
    m = make(kind).eval()
    X, _ = pad_names(WORDS, VOCAB, 1)
    full = m(X)[0]  # (B, T, V)
    cache = m.new_cache(len(WORDS))
    steps = [cache.logits] + [m.step(X[:, t], cache) for t in range(1, X.shape[1])]
    assert torch.allclose(torch.stack(steps, 1), full, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prefix", [(), (1, 13)])
def test_cached_and_full_sampling_draw_the_same_names(kind, prefix):
    m = make(kind).eval()
    names = [generate(m, 50, generator=torch.Generator().manual_seed(5), prefix=prefix, method=method,
                      max_new_tokens=12) for method in ("cached", "full")]
    assert names[0] == names[1]
    assert all(tuple(n[:len(prefix)]) == prefix for n in names[0])


def test_a_window_is_not_a_peer_and_the_transformer_stops_at_its_positions():
    with pytest.raises(Exception, match="'window' is not available for a 'lstm'"):
        generate(make("lstm"), 2, method="window")
    m = make("transformer")  # n_positions 12: the boundary id and 11 more ids
    names = generate(m, 20, generator=torch.Generator().manual_seed(0), max_new_tokens=100,
                     prefix=(1, 2, 3))
    assert max(map(len, names)) <= 3 + 12 - 3  # prefix + draws, the last draw not fed back
    with pytest.raises(Exception, match="fill the model's n_positions 12"):
        generate(m, 2, prefix=tuple(range(1, 13)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("budget", [7, 40, 10_000])
def test_split_loss_is_the_mean_over_every_target(kind, budget):
    """`split_loss` on the length-grouped padded batches == each name scored alone by the
    reference forward, summed and divided by the targets; the batches are bounded and cover
    every target once."""
    m = make(kind).eval()
    batches = list(eval_batches(m, WORDS, VOCAB, max_positions=budget))
    assert sum(int((Y != -1).sum()) for _, Y in batches) == sum(len(w) + 1 for w in WORDS)
    assert all(Y.numel() <= budget for X, Y in batches if len(X) > 1)  # a longer name: a batch of its own
    assert all((Y != -1).all() for _, Y in batches)  # one length per batch: no padding
    assert len(batches) > (1 if budget < 100 else 0)
    total = 0.0
    for w in WORDS:
        X, Y = pad_names([w], VOCAB, 1)
        total += F.cross_entropy(m(X)[0][0], Y[0], reduction="sum").item()
    expected = total / sum(len(w) + 1 for w in WORDS)
    assert abs(split_loss(m, WORDS, VOCAB, batches=batches) - expected) < 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_make_batches_gives_the_peers_padded_names(kind):
    m = make(kind, dtype=torch.float32)
    cfg = RECIPES[kind]
    source = make_batches(m, WORDS, VOCAB, cfg, torch.Generator().manual_seed(0))
    X, Y = source.next()
    assert X.shape[0] == min(cfg.batch_size, len(WORDS)) and (X[:, 0] == 0).all()
    assert Y.shape[1] == X.shape[1]


TINY = {"lstm": ["--n-embd", "8", "--n-hidden", "12"], "gru": ["--n-embd", "8", "--n-hidden", "12"],
        "transformer": ["--n-embd", "8", "--n-head", "2", "--n-layers", "2", "--n-positions", "16"]}
FLAGS = ["--max-steps", "40", "--eval-interval", "10", "--batch-size", "8", "--warmup", "5", "--no-progress"]


@pytest.mark.parametrize("kind", KINDS)
def test_train_sample_eval_resume_through_the_cli(kind, tmp_path, tiny_file, cli, copy_checkpoint_at,
                                                  scores_of):
    """Each peer through the pipeline: train (its recipe, with dropout), sample, eval; and
    40 steps straight == 20, then --resume for 20, bit for bit."""
    resumed = tmp_path / "resumed"
    with copy_checkpoint_at(20, resumed):
        code, out, err = cli("train", "--model", kind, "-i", tiny_file, "-o", tmp_path / "straight",
                             *TINY[kind], *FLAGS, "-n", "5")
    assert code == 0, err
    assert f"{kind} model" in out and "training " in out and "evaluation and checkpoints" in out
    code, out, err = cli("train", "-o", resumed, "--resume")
    assert code == 0 and "resuming" in out, err
    a, b = RunDir(tmp_path / "straight").load(), RunDir(resumed).load()
    assert a["step"] == b["step"] == 40 and a["model_config"]["kind"] == kind
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert torch.equal(a["lossi"], b["lossi"]) and str(a["optimizer"]) == str(b["optimizer"])
    assert scores_of(tmp_path / "straight") == scores_of(resumed)
    code, out, err = cli("sample", "-o", resumed, "-n", "7", "--seed", "1")
    assert code == 0 and len(out.strip().splitlines()) == 7, err
    code, out, err = cli("eval", "-o", resumed)
    assert code == 0 and "val unseen" in out, err
    loss = float(next(line for line in out.splitlines() if line.startswith("val ")).split()[2])
    assert abs(loss - b["best"]["val_loss"]) <= 5e-5 + 1e-12  # printed to 4 decimals


def test_a_line_longer_than_the_transformers_positions_is_one_line(tmp_path, tiny_file, cli, one_line_error):
    code, _, err = cli("train", "--model", "transformer", "-i", tiny_file, "-o", tmp_path / "run",
                       "--n-positions", "6", *FLAGS)
    one_line_error(code, err, "longest line has 9 characters")
    assert "give --n-positions 10 or more" in err and not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("given, message", [
    (dict(kind="transformer", n_embd=10, n_head=4), "n_head 4 does not divide n_embd 10"),
    (dict(kind="lstm", n_layers=0), "n_layers must be at least 1"),
    (dict(kind="gru", dropout=1.0), "dropout must be at least 0 and below 1"),
    (dict(kind="lstm", n_head=2), "n_head does not apply to a 'lstm' model"),
    (dict(kind="transformer", n_positions=1), "n_positions must be at least 2"),
])
def test_model_mistakes(given, message):
    with pytest.raises(Exception, match=message):
        model_config(given.pop("kind"), **given)
