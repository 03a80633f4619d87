"""`--time-budget`: the run measures its step rate, fixes its steps, re-fits them at each
evaluation to the time left (all recorded), and is then exactly the fixed-step run of the
recorded schedule; resume is exact; a budget too small for the first evaluation, or given
with --max-steps, is one line."""

import json
import math
import types
from dataclasses import replace

import pytest

import wavenet.checkpoint as ckpt_io
import wavenet.commands
import wavenet.train
from wavenet.config import RECIPES, TrainConfig
from wavenet.rundir import RunDir

SMALL = ["--batch-size", "8", "--no-progress", "-n", "0"]


TICK = 0.1  # seconds the fake clock advances each time the probe reads it
RUN_TICK = 0.28  # seconds the run's fake clock advances each time it reads it


def _clock(tick: float) -> types.SimpleNamespace:
    readings = iter(range(1 << 30))
    return types.SimpleNamespace(perf_counter=lambda: tick * next(readings))


@pytest.fixture(autouse=True)
def fake_clock(monkeypatch):
    """The probe reads a clock that advances TICK per reading (after the warm-up, then after
    each chunk of steps), and measures over 0.3 s instead of 2: so it times 3 chunks and every
    run here fits the same steps however busy the machine is (the runs are in-process). The
    run's own clock (commands.py) advances RUN_TICK per reading: it reads once at the start
    of the training time and three times an evaluation (before it, after it and after the
    checkpoint), so training takes RUN_TICK an interval, however long the interval: a machine
    that is slower than the probe measured (2x at the probe's first fit, below)."""
    monkeypatch.setattr(wavenet.train, "time", _clock(TICK))
    monkeypatch.setattr(wavenet.train, "PROBE_SECONDS", 0.3)
    monkeypatch.setattr(wavenet.commands, "time", _clock(RUN_TICK))


def replay(cli, monkeypatch, kind: str, cfg: dict, *argv):
    """Train with no budget on the recipe a budget run recorded (its max_steps, evaluation
    interval and schedule knots, which no flag sets): the fixed-step run it claims to be."""
    fixed = replace(TrainConfig(**cfg), time_budget=0.0)
    monkeypatch.setitem(RECIPES, kind, fixed)
    return cli("train", "--model", kind, *argv)


SHAPES = {"wavenet": ["--n-residual", "6", "--n-skip", "5", "--n-layers", "2", "--n-cycles", "1"],
          "lstm": ["--n-embd", "6", "--n-hidden", "6"], "conv": ["--n-embd", "4", "--n-hidden", "8"],
          "mlp": ["--n-embd", "4", "--n-hidden", "8"]}


@pytest.mark.parametrize("kind, extra", [("wavenet", []), ("wavenet", ["--ema", "0.9"]), ("mlp", []),
                                         pytest.param("lstm", [], marks=pytest.mark.slow),
                                         pytest.param("conv", [], marks=pytest.mark.slow)],
                         ids=["wavenet", "wavenet-ema", "mlp", "lstm", "conv"])
def test_a_budget_run_is_the_fixed_step_run_it_recorded(kind, extra, tmp_path, tiny_file, cli, scores_of,
                                                        monkeypatch, same_run):
    """The probe's measured rate and first fit are recorded with the re-fits; the run trains
    slower than the probe measured, so it re-aims at the budget: half the steps, the
    schedule continued by knots. Training the recorded schedule with no budget gives the same
    weights, batches, losses, optimizer, random stream and weight average (--ema), bit for
    bit: measuring the rate left no trace."""
    extra = [*extra, "--warmup", "5"]  # the re-fits come after the warm-up, so they leave knots
    code, out, err = cli("train", "--model", kind, "-i", tiny_file, "-o", tmp_path / "budget",
                         "--time-budget", "0.03", *SHAPES[kind], *SMALL, *extra)
    assert code == 0, err
    a = RunDir(tmp_path / "budget").load()
    cfg, budget = a["train_config"], a["budget"]
    # the fake clock: 3 chunks of PROBE_CHUNK steps in 0.3 s, 0.4 s from the first reading
    probe_steps = 3 * wavenet.train.PROBE_CHUNK
    first = budget["steps"]  # the probe's fit
    assert {k: budget[k] for k in ("minutes", "step_s", "probe_s", "probe_steps")} == dict(
        minutes=0.03, step_s=pytest.approx(0.3 / probe_steps), probe_s=pytest.approx(0.4),
        probe_steps=probe_steps)
    assert first == int((0.03 * 60 - budget["probe_s"]) / budget["step_s"])
    assert f"{first:,} steps at" in out and "of a 0.03 min budget" in out and first >= 139
    interval = -(-first // 10)  # ten evaluations of the first fit
    assert cfg["time_budget"] == 0.03 and cfg["eval_interval"] == interval
    # each interval's training took RUN_TICK: the rate is RUN_TICK / interval, 2x the probe's
    rate = RUN_TICK / interval
    assert rate == pytest.approx(2 * budget["step_s"], rel=0.05)
    refits = budget["refits"]
    assert refits[0] == [interval, interval + int((0.03 * 60 - budget["probe_s"] - RUN_TICK) / rate)]
    assert cfg["max_steps"] == a["step"] == refits[-1][1] == pytest.approx(first / 2, abs=interval)
    assert cfg["schedule_knots"] and cfg["schedule_knots"][0][0] == interval
    metrics = [json.loads(line) for line in (tmp_path / "budget" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics][-1] == cfg["max_steps"]
    clocks = [m["train_s"] for m in metrics]
    assert clocks == sorted(clocks) and clocks[0] >= budget["probe_s"]  # the probe is on the clock
    assert clocks[-1] <= 0.03 * 60 + RUN_TICK  # within one interval's time of the budget
    code, _, err = replay(cli, monkeypatch, kind, cfg, "-i", tiny_file, "-o", tmp_path / "fixed",
                          *SHAPES[kind], *SMALL, *extra)
    assert code == 0, err
    b = RunDir(tmp_path / "fixed").load()
    assert "budget" not in b and b["step"] == a["step"]
    same_run(a, b)
    assert scores_of(tmp_path / "budget") == scores_of(tmp_path / "fixed")


def test_a_budget_on_a_steady_machine_keeps_its_first_fit(tmp_path, tiny_file, cli, monkeypatch, same_run):
    """Where training runs at the rate the probe measured, no re-fit changes anything: the
    run is the plain fixed-step run of the first fit (no knots), as --max-steps gives it."""
    probe_steps = 3 * wavenet.train.PROBE_CHUNK
    first = int((0.03 * 60 - (0.4 + 1e-12)) / (0.3 / probe_steps))  # the fake probe's 0.4 s, give or take
    interval = -(-first // 10)
    # the run's clock at the probe's rate: an interval of training takes interval * step_s
    monkeypatch.setattr(wavenet.commands, "time", _clock(interval * 0.3 / probe_steps))
    code, _, err = cli("train", "--model", "wavenet", "-i", tiny_file, "-o", tmp_path / "budget",
                       "--time-budget", "0.03", *SHAPES["wavenet"], *SMALL)
    assert code == 0, err
    a = RunDir(tmp_path / "budget").load()
    assert "refits" not in a["budget"] and a["train_config"]["schedule_knots"] == ()
    assert a["step"] == a["train_config"]["max_steps"] == first
    code, _, err = cli("train", "--model", "wavenet", "-i", tiny_file, "-o", tmp_path / "fixed",
                       *SHAPES["wavenet"], *SMALL, "--max-steps", first, "--eval-interval", interval)
    assert code == 0, err
    same_run(a, RunDir(tmp_path / "fixed").load())


def test_a_budget_run_resumes_exactly(tmp_path, tiny_file, cli, monkeypatch, scores_of, same_run):
    """Killed after its first checkpoint, a budget run resumes with its recorded steps and
    schedule (no new measurement) and, re-fitting on the same clock, ends where the
    uninterrupted run ends."""
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    real_save = ckpt_io.save_checkpoint
    copied = []

    def save_and_copy(path, state):  # a copy of the first checkpoint, as a crash right after it leaves
        real_save(path, state)
        if not copied:
            copied.append(state["step"])
            (resumed / "checkpoint.pt").write_bytes(path.read_bytes())
            (resumed / "metrics.jsonl").write_bytes((path.parent / "metrics.jsonl").read_bytes())

    monkeypatch.setattr(ckpt_io, "save_checkpoint", save_and_copy)
    code, _, err = cli("train", "--model", "wavenet", "-i", tiny_file, "-o", tmp_path / "straight",
                       "--time-budget", "0.03", "--dropout", "0.2", "--warmup", "5", *SHAPES["wavenet"],
                       *SMALL)
    assert code == 0, err
    monkeypatch.setattr(ckpt_io, "save_checkpoint", real_save)
    a = RunDir(tmp_path / "straight").load()
    assert 0 < copied[0] < a["step"]
    assert a["train_config"]["schedule_knots"][0][0] == copied[0]  # re-fitted there
    code, out, err = cli("train", "-o", resumed, "--resume")
    assert code == 0 and "resuming" in out and "time budget" not in out, err
    b = RunDir(resumed).load()
    assert b["step"] == a["step"] and b["budget"] == a["budget"] and b["train_config"] == a["train_config"]
    same_run(a, b)
    assert scores_of(tmp_path / "straight") == scores_of(resumed)


def test_budget_mistakes_are_one_line(tmp_path, tiny_file, cli, one_line_error):
    """A budget smaller than measuring the rate takes (at least PROBE_SECONDS) fits no steps; an
    evaluation interval beyond the budget never evaluates; a budget and a step count
    contradict each other. Each is one line, and nothing is trained or saved."""
    args = ["train", "--model", "wavenet", "-i", tiny_file, *SHAPES["wavenet"], *SMALL]
    code, _, err = cli(*args, "-o", tmp_path / "a", "--time-budget", "0.001")
    one_line_error(code, err, "--time-budget 0.001 minutes fits 0 steps")
    assert "before the first evaluation: give at least" in err
    assert not (tmp_path / "a" / "checkpoint.pt").exists()
    code, _, err = cli(*args, "-o", tmp_path / "b", "--time-budget", "0.03", "--eval-interval", "100000000")
    one_line_error(code, err, "fewer than the 100,000,000 before the first evaluation")
    assert "or a smaller --eval-interval" in err
    code, _, err = cli(*args, "-o", tmp_path / "c", "--time-budget", "1", "--max-steps", "10")
    one_line_error(code, err, "--time-budget sets the number of steps: give it or --max-steps, not both")
    code, _, err = cli(*args, "-o", tmp_path / "d", "--time-budget", "-1")
    one_line_error(code, err, "--time-budget must be a number of minutes, 0 or more, got -1.0")


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_a_refit_continues_the_schedule_from_where_it_stands(schedule):
    """refit_to_budget at step 400 of 1,000 (cosine after 100 warm-up steps, or the step
    schedule's drop at 75%): the rates up to and at the knot are the old schedule's, bit for
    bit, so the rate does not jump; from it the rate keeps falling, to the same end at the
    new last step, whether the machine turned out slower (600 steps)
    or faster (1,500). A second re-fit does the same from its own knot. A change within the
    slack (or a re-fit at the last step) changes nothing."""
    cfg = TrainConfig(max_steps=1000, learning_rate=1.0, warmup=100 if schedule == "cosine" else 0,
                      schedule=schedule, final_lr=0.0, decay_at=0.75, time_budget=1.0, optimizer="adamw")
    lr = wavenet.train.learning_rate_at
    step_s = 0.06  # 1,000 steps in the minute
    assert wavenet.train.refit_to_budget(cfg, 400, 24.0, step_s * 1.002) is cfg  # within the slack
    assert wavenet.train.refit_to_budget(cfg, 1000, 60.0, 1.0) is cfg  # the run is over
    for new_s, new_steps in ((step_s * 3, 400 + 200), (step_s * 0.4, 400 + 1500)):
        refit = wavenet.train.refit_to_budget(cfg, 400, 24.0, new_s)  # 36 s left
        assert refit.max_steps == new_steps and refit.schedule_knots[-1][:1] == (400,)
        assert [lr(refit, s) for s in range(401)] == [lr(cfg, s) for s in range(401)]
        rates = [lr(refit, s) for s in range(new_steps)]
        if schedule == "cosine":
            assert all(b <= a for a, b in zip(rates[100:], rates[101:])) and rates[-1] == 0.0
        else:  # the drop comes at 75% of the way, counted as the schedule had it until 400
            drop = next(s for s, r in enumerate(rates) if r < 1.0)
            assert rates[drop:] == [0.1] * (new_steps - drop)
            assert drop == 400 + math.ceil((0.75 - 0.4) / 0.6 * (new_steps - 400)) or \
                drop == 400 + math.ceil((0.75 - 0.4) / 0.6 * (new_steps - 400)) + 1
        again = wavenet.train.refit_to_budget(refit, 500, 30.0, step_s)  # 30 s left at the first rate
        assert again.max_steps == 1000 and len(again.schedule_knots) == 2
        assert [lr(again, s) for s in range(501)] == [lr(refit, s) for s in range(501)]


def test_a_finished_budget_run_extends_with_more_minutes(tmp_path, tiny_file, cli, one_line_error):
    """--resume --time-budget M (more than recorded) trains on until the clock holds M
    minutes; the checkpoint records the longer budget. --max-steps cannot extend it."""
    args = ["train", "--model", "wavenet", "-i", tiny_file, *SHAPES["wavenet"], *SMALL]
    code, _, err = cli(*args, "-o", tmp_path / "run", "--time-budget", "0.03")
    assert code == 0, err
    a = RunDir(tmp_path / "run").load()
    code, _, err = cli("train", "-o", tmp_path / "run", "--resume", "--max-steps", a["step"] + 10)
    one_line_error(code, err, "this run trains to a time budget (0.03 minutes): extend it with "
                   "--time-budget, not --max-steps")
    code, out, err = cli("train", "-o", tmp_path / "run", "--resume", "--time-budget", "0.06",
                         "--no-progress", "-n", "0")
    assert code == 0, err
    assert f"resuming {tmp_path / 'run'} at step {a['step']:,}, extended from {a['step']:,}" in out
    b = RunDir(tmp_path / "run").load()
    assert b["train_config"]["time_budget"] == 0.06 and b["budget"]["minutes"] == 0.06
    assert b["budget"]["extended"][0][0] == a["step"] and b["step"] == b["train_config"]["max_steps"]
    assert b["step"] > 1.5 * a["step"]  # twice the minutes: about twice the steps, re-fitted by the clock
    assert b["clock"]["train_s"] <= 0.06 * 60 + RUN_TICK
    assert b["train_config"]["schedule_knots"][:len(a["train_config"]["schedule_knots"])] == \
        a["train_config"]["schedule_knots"]
