"""`--ema`: an exponential moving average of the weights. The average is the closed-form
weighted sum of the steps' weights; val, the best weights and the last are the average's;
resume is bit-exact; a run without it is unchanged."""

import json

import pytest
import torch

from wavenet.checkpoint import load_checkpoint, model_from_checkpoint
from wavenet.config import TrainConfig
from wavenet.data import Vocab, load_words, split_words
from wavenet.evaluate import split_loss
from wavenet.train import WeightAverage

TINY = ["--model", "wavenet", "--n-residual", "6", "--n-skip", "5", "--n-layers", "2", "--n-cycles", "2",
        "--max-steps", "40", "--eval-interval", "10", "--batch-size", "8", "--warmup", "5", "--no-progress",
        "-n", "0", "--dropout", "0.2"]


def test_the_average_is_the_weighted_sum_of_every_steps_weights():
    """After steps 0..K-1 the average is prod(d) w_init + sum_t (1 - d_t) prod_{s > t} d_s w_t,
    d_t = min(decay, (1 + t) / (10 + t)): the weights of every step, in float64 to 1e-12."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    model.register_buffer("stat", torch.zeros(3, dtype=torch.float64))
    model.register_buffer("count", torch.zeros((), dtype=torch.long))  # not averaged: not floating point
    average = WeightAverage(model, 0.9)
    history = [{k: v.clone() for k, v in model.state_dict().items()}]  # the weights after each step
    for t in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.stat.add_(1.0)
            model.count.add_(1)
        average.update(t)
        history.append({k: v.clone() for k, v in model.state_dict().items()})
    d = [min(0.9, (1 + t) / (10 + t)) for t in range(30)]
    got = average.state_dict()
    assert set(got) == {"weight", "bias", "stat"}
    for name in got:
        want = history[0][name] * torch.tensor(d, dtype=torch.float64).prod()
        for t in range(30):
            later = torch.tensor(d[t + 1:], dtype=torch.float64).prod()
            want = want + (1 - d[t]) * later * history[t + 1][name]
        torch.testing.assert_close(got[name], want, rtol=0, atol=1e-12)
    live = average.apply_to(model)  # the average goes in, the live weights come back out
    torch.testing.assert_close(model.weight, got["weight"], rtol=0, atol=0)
    assert model.count.item() == 30
    model.load_state_dict(live)
    assert torch.equal(model.weight, history[-1]["weight"])


def test_val_the_best_and_the_last_weights_are_the_averages(tmp_path, tiny_file, cli):
    """Every val in metrics.jsonl is the average's: the last one is split_loss of the
    checkpoint's last weights (the average), not of the live weights it also keeps."""
    work = tmp_path / "run"
    code, out, err = cli("train", "-i", tiny_file, "-o", work, *TINY, "--ema", "0.9")
    assert code == 0, err
    ckpt = load_checkpoint(work / "checkpoint.pt")
    assert ckpt["train_config"]["ema"] == 0.9 and set(ckpt["ema"]) == set(ckpt["model"])
    assert any(not torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in ckpt["model"])
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    words = load_words(tiny_file)
    val = split_words(words)[1]
    last, vocab = model_from_checkpoint(ckpt, weights="last")
    for name, t in last.state_dict().items():
        assert torch.equal(t, ckpt["ema"][name]), name
    assert split_loss(last, val, vocab) == pytest.approx(records[-1]["val_loss"], rel=1e-12)
    live, _ = model_from_checkpoint({k: v for k, v in ckpt.items() if k != "ema"}, weights="last")
    assert split_loss(live, val, vocab) != pytest.approx(records[-1]["val_loss"], rel=1e-6)
    best = min(records, key=lambda r: r["val_loss"])
    assert ckpt["best"]["step"] == best["step"] and ckpt["best"]["val_loss"] == best["val_loss"]
    assert f"val loss   {records[-1]['val_loss']:.4f}" in out  # the report: the average too
    assert Vocab.from_words(words) == vocab


def test_resume_with_an_average_is_bit_identical(tmp_path, tiny_file, cli, copy_checkpoint_at, scores_of):
    """40 steps straight == 20, then --resume for 20: the average is in the checkpoint."""
    resumed = tmp_path / "resumed"
    with copy_checkpoint_at(20, resumed):
        code, _, err = cli("train", "-o", tmp_path / "straight", "-i", tiny_file, *TINY, "--ema", "0.95")
    assert code == 0, err
    code, out, err = cli("train", "-o", resumed, "--resume")
    assert code == 0 and "resuming" in out, err
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(resumed / "checkpoint.pt")
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert scores_of(tmp_path / "straight") == scores_of(resumed) and len(scores_of(resumed)) == 4


def test_no_average_leaves_a_run_as_it_was(tmp_path, tiny_file, cli):
    """ema 0 (every kind's default but the WaveNet's) keeps nothing beside the weights; a bad
    decay is one line."""
    code, _, err = cli("train", "-i", tiny_file, "-o", tmp_path / "run", *TINY, "--ema", "0")
    assert code == 0, err
    assert "ema" not in load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(Exception, match="ema must be at least 0 and below 1"):
            TrainConfig(ema=bad)
