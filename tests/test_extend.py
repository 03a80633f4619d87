"""`wavenet train --resume --max-steps N` on a run of fewer steps trains it further.

The recipe gets the new length and its schedule is re-aimed at the new end
(`train.extend_recipe`): where the rate up to the resume step does not depend on the run's
length, the run extended in two pieces is bit for bit the run given the final length at
once; where it does (a cosine), each later step takes the longer recipe's rate.
"""

from dataclasses import replace

import pytest

from wavenet.config import TrainConfig
from wavenet.rundir import RunDir
from wavenet.train import extend_recipe, learning_rate_at, schedule_progress

WAVENET = ["--model", "wavenet", "--n-residual", "6", "--n-skip", "5", "--n-layers", "2", "--n-cycles", "1",
           "--batch-size", "8", "--no-progress", "-n", "0", "--eval-interval", "10"]


@pytest.mark.parametrize("kind, flags", [
    ("conv", ["--decay-at", "1"]),  # SGD at a constant rate: the lecture's drop never comes
    ("wavenet", ["--final-lr", "1", "--warmup", "5", "--ema", "0.9", "--dropout", "0.2",
                 "--final-dropout", "0.2"]),  # AdamW, flat (the default recipe ramps its dropout: not flat)
])
def test_two_pieces_are_one_run_at_a_constant_rate(kind, flags, tmp_path, tiny_file, cli, tiny_flags,
                                                   scores_of, same_run):
    shape = tiny_flags if kind == "conv" else WAVENET
    args = ["train", "-i", tiny_file, *shape, *flags]
    code, _, err = cli(*args, "-o", tmp_path / "once", "--max-steps", "40")
    assert code == 0, err
    code, _, err = cli(*args, "-o", tmp_path / "twice", "--max-steps", "20")
    assert code == 0, err
    code, out, err = cli("train", "-o", tmp_path / "twice", "--resume", "--max-steps", "40", "--no-progress",
                         "-n", "0")
    assert code == 0, err
    assert "resuming" in out and "extended from 20 to 40 steps" in out
    once, twice = RunDir(tmp_path / "once").load(), RunDir(tmp_path / "twice").load()
    assert twice["step"] == 40 and twice["train_config"] == once["train_config"]
    same_run(once, twice)
    assert once["best"]["step"] == twice["best"]["step"]
    assert scores_of(tmp_path / "once") == scores_of(tmp_path / "twice")


def test_a_cosine_is_re_aimed_at_the_new_end(tmp_path, tiny_file, cli, monkeypatch):
    """The extended run's rates from the resume step on are the 40-step recipe's, as the
    optimizer applies them (read at every step)."""
    import wavenet.train
    args = ["train", "-i", tiny_file, *WAVENET, "--warmup", "4", "--final-lr", "0.1"]
    code, _, err = cli(*args, "-o", tmp_path / "run", "--max-steps", "20")
    assert code == 0, err
    short = TrainConfig(**RunDir(tmp_path / "run").load()["train_config"])
    seen = []
    real = wavenet.train.learning_rate_at
    monkeypatch.setattr(wavenet.train, "learning_rate_at", lambda cfg, step: seen.append(
        (step, cfg.max_steps)) or real(cfg, step))
    code, _, err = cli("train", "-o", tmp_path / "run", "--resume", "--max-steps", "40", "--no-progress",
                       "-n", "0")
    assert code == 0, err
    assert sorted({s for s, _ in seen}) == list(range(20, 40)) and {m for _, m in seen} == {40}
    longer = TrainConfig(**RunDir(tmp_path / "run").load()["train_config"])
    assert longer == replace(short, max_steps=40)  # the recipe a 40-step run is given, no knot
    # so a decayed cosine rises again: step 20 of 40 runs well above the 20-step run's last rate
    assert learning_rate_at(longer, 20) > 4 * learning_rate_at(short, 19)


def test_extend_recipe_stretches_a_budget_runs_last_line():
    """A budget run's recipe: the knot's place holds, the line after it ends at the new end."""
    cfg = TrainConfig(max_steps=300, schedule="cosine", warmup=10, final_lr=0.0, time_budget=1.0,
                      schedule_knots=((100, 0.25, 400),))
    longer = extend_recipe(cfg, step=300, train_s=60.0, step_s=0.1, time_budget=2.0)
    assert (longer.time_budget, longer.max_steps) == (2.0, 300 + 600)
    assert longer.schedule_knots == cfg.schedule_knots
    assert schedule_progress(longer, 100) == schedule_progress(cfg, 100) == 0.25
    assert schedule_progress(longer, 899) == pytest.approx(1.0) == schedule_progress(cfg, 299)
    assert schedule_progress(longer, 300) == pytest.approx(0.25 + 0.75 * 200 / 799)
    assert extend_recipe(cfg, 300, 60.0, 0.1) is cfg  # nothing asked: nothing changes


@pytest.mark.parametrize("first, then, message", [
    (["--max-steps", "20"], ["--max-steps", "10"],
     "--resume: --max-steps 10 is fewer than the checkpoint's 20: a run can be extended, not shortened"),
    (["--max-steps", "20"], ["--time-budget", "1"],
     "--resume: this run has no time budget: extend it with --max-steps, not --time-budget"),
    (["--max-steps", "20"], ["--learning-rate", "0.5"],
     "--resume: --learning-rate 0.5 contradicts the checkpoint"),
])
def test_extension_mistakes_are_one_line(first, then, message, tmp_path, tiny_file, cli, tiny_flags,
                                         one_line_error):
    code, _, err = cli("train", "-i", tiny_file, "-o", tmp_path / "run", *tiny_flags, *first)
    assert code == 0, err
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    code, _, err = cli("train", "-o", tmp_path / "run", "--resume", *then)
    one_line_error(code, err, message)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
