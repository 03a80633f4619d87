"""`--final-dropout`: the model's dropout ramped linearly over the schedule, set on every
step by the loop, the same on the hand-written and the autograd step, resumed exactly
(test_wavenet.py's resume test), and refused where a model has no dropout."""

from dataclasses import replace

import pytest
import torch

from wavenet.batches import make_batches
from wavenet.config import RECIPES, TrainConfig, model_config
from wavenet.data import Vocab
from wavenet.models import WaveNet, build_model
from wavenet.train import dropout_at, make_optimizer, refit_to_budget, schedule_progress, train_loop

WORDS = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "charlotte", "amelia", "jo", "x"]
VOCAB = Vocab.from_words(WORDS)


def test_the_ramp_runs_from_the_start_of_the_decay_to_the_last_step():
    """Cosine: the model's dropout through the warm-up, then a straight line to
    final_dropout, reached exactly at the last step; the step schedule ramps from step 0 to
    max_steps. After a time budget's re-fit (a knot) it follows schedule_progress, so it
    goes on from where it stood, without a jump. No final_dropout: the model's dropout."""
    cfg = TrainConfig(max_steps=1001, warmup=100, schedule="cosine", optimizer="adamw", final_dropout=0.4)
    ps = [dropout_at(cfg, s, 0.1) for s in range(1001)]
    assert ps[:101] == [0.1] * 101 and ps[1000] == pytest.approx(0.4, abs=1e-15)
    assert ps[550] == pytest.approx(0.25, abs=1e-15)  # half-way through the decay's 900 steps
    assert all(b > a for a, b in zip(ps[100:], ps[101:]))
    step = TrainConfig(max_steps=1000, final_dropout=0.0)
    assert dropout_at(step, 0, 0.3) == 0.3 and dropout_at(step, 500, 0.3) == pytest.approx(0.15, abs=1e-15)
    assert dropout_at(replace(cfg, final_dropout=None), 700, 0.1) == 0.1
    refit = refit_to_budget(replace(cfg, time_budget=1.0), 400, 24.0, 0.1)  # a slower machine: fewer steps
    assert refit.schedule_knots and refit.max_steps < cfg.max_steps
    assert dropout_at(refit, 400, 0.1) == dropout_at(cfg, 400, 0.1)  # no jump at the knot
    for s in (400, 450, refit.max_steps - 1):
        assert dropout_at(refit, s, 0.1) == pytest.approx(0.1 + 0.3 * schedule_progress(refit, s), abs=1e-15)
    assert dropout_at(refit, refit.max_steps - 1, 0.1) == pytest.approx(0.4, abs=1e-15)


@pytest.mark.parametrize("kind, shape", [
    ("wavenet", dict(n_residual=6, n_skip=5, n_layers=2, n_cycles=1)),
    ("lstm", dict(n_embd=6, n_hidden=6)), ("gru", dict(n_embd=6, n_hidden=6)),
    ("transformer", dict(n_embd=8, n_head=2, n_layers=1, n_positions=16))])
def test_the_loop_sets_every_steps_dropout_and_puts_it_back(kind, shape):
    """Each step's forward pass sees dropout_at on every dropout the model's `dropout`
    sets (its `dropouts()`: the WaveNet's blocks and head, not its embeddings); after the
    loop they are back at the model's own."""
    config = model_config(kind, dropout=0.1, **shape)
    model = build_model(config, len(VOCAB), torch.Generator().manual_seed(0))
    if kind == "wavenet":
        model.embd_drop.p = 0.05
    cfg = replace(RECIPES[kind], max_steps=30, warmup=10, batch_size=4, eval_interval=30, final_dropout=0.5)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append([d.p for d in m.dropouts()]))
    batches = make_batches(model, WORDS, VOCAB, cfg, torch.Generator().manual_seed(1))
    train_loop(model, make_optimizer(model, cfg), batches, cfg, progress=False)
    n = len(model.dropouts())  # the LSTM's one module serves each of its places
    assert n == {"wavenet": 3, "transformer": 2}.get(kind, 1)  # 2 blocks + the head; 1 block + input
    assert seen == [[dropout_at(cfg, s, 0.1)] * n for s in range(30)]
    assert seen[0][0] == 0.1 and seen[-1][0] == pytest.approx(0.5, abs=1e-15)
    assert [d.p for d in model.dropouts()] == [0.1] * len(model.dropouts())
    if kind == "wavenet":
        assert model.embd_drop.p == 0.05


def test_the_hand_written_step_ramps_as_autograd_does():
    """Twenty float64 AdamW steps with dropout ramped from 0.05 to 0.6, on the hand-written
    step and on autograd through the same blocks, from one seed: the same losses and
    weights to 1e-10. A step that read the model's configured dropout rather than the
    ramp's would draw other masks; the ramp's run differs from the fixed dropout's."""
    ends, losses = {}, {}
    for fused, final in ((False, 0.6), (True, 0.6), (True, None)):
        model = WaveNet(len(VOCAB), n_residual=6, n_skip=5, n_layers=2, n_cycles=2, dropout=0.05,
                        embd_dropout=0.1, generator=torch.Generator().manual_seed(0)).double()
        model.fused = fused
        cfg = replace(RECIPES["wavenet"], max_steps=20, warmup=2, batch_size=4, eval_interval=20,
                      final_dropout=final)
        lossi = []
        batches = make_batches(model, WORDS, VOCAB, cfg, torch.Generator().manual_seed(1))
        torch.manual_seed(3)
        train_loop(model, make_optimizer(model, cfg), batches, cfg, lossi=lossi, progress=False)
        ends[fused, final], losses[fused, final] = model.state_dict(), lossi
    torch.testing.assert_close(losses[True, 0.6], losses[False, 0.6], rtol=0, atol=1e-10)
    for name, p in ends[False, 0.6].items():
        torch.testing.assert_close(ends[True, 0.6][name], p, rtol=0, atol=1e-10, msg=name)
    assert losses[True, 0.6][:3] == losses[True, None][:3]  # the warm-up and the ramp's first step: 0.05
    assert abs(losses[True, 0.6][-1] - losses[True, None][-1]) > 1e-3


def test_final_dropout_mistakes_are_one_line(tmp_path, tiny_file, cli, tiny_flags, one_line_error):
    """A kind without dropout, a P out of range, and on --resume a P the checkpoint does not
    hold (a ramped run's resume: test_wavenet.py)."""
    code, _, err = cli("train", "-i", tiny_file, "-o", tmp_path / "a", *tiny_flags, "--final-dropout", "0.3")
    one_line_error(code, err, "--final-dropout does not apply to a 'conv' model (it has no dropout)")
    assert not (tmp_path / "a" / "checkpoint.pt").exists()
    lstm = [*tiny_flags, "--model", "lstm", "--max-steps", "10"]
    code, _, err = cli("train", "-i", tiny_file, "-o", tmp_path / "b", *lstm, "--final-dropout", "1")
    one_line_error(code, err, "--final-dropout must be at least 0 and below 1, got 1.0")
    code, _, err = cli("train", "-i", tiny_file, "-o", tmp_path / "c", *lstm, "--final-dropout", "0.5")
    assert code == 0, err
    code, _, err = cli("train", "-o", tmp_path / "c", "--resume", "--final-dropout", "0.4")
    one_line_error(code, err, "--final-dropout 0.4 contradicts the checkpoint (0.5)")
