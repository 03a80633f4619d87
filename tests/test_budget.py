"""`--time-budget`: the run measures its step rate, fixes its steps (recorded), and is then
exactly the fixed-step run of that many steps; resume is exact; a budget too small for the
first evaluation, or given with --max-steps, is one line."""

import json
import types

import pytest
import torch

import wavenet.checkpoint as ckpt_io
import wavenet.train
from wavenet.rundir import RunDir

SMALL = ["--batch-size", "8", "--no-progress", "-n", "0"]


TICK = 0.1  # seconds the fake clock advances each time the probe reads it


@pytest.fixture(autouse=True)
def fake_clock(monkeypatch):
    """The probe reads a clock that advances TICK per reading (after the warm-up, then after
    each chunk of steps), and measures over 0.3 s instead of 2: so it times 3 chunks and every
    run here fits the same steps however busy the machine is (the runs are in-process)."""
    readings = iter(range(1 << 30))
    clock = types.SimpleNamespace(perf_counter=lambda: TICK * next(readings))
    monkeypatch.setattr(wavenet.train, "time", clock)
    monkeypatch.setattr(wavenet.train, "PROBE_SECONDS", 0.3)


SHAPES = {"wavenet": ["--n-residual", "6", "--n-skip", "5", "--n-layers", "2", "--n-cycles", "1"],
          "lstm": ["--n-embd", "6", "--n-hidden", "6"], "conv": ["--n-embd", "4", "--n-hidden", "8"],
          "mlp": ["--n-embd", "4", "--n-hidden", "8"]}


def _same_run(a: dict, b: dict) -> None:
    assert ("ema" in a) == ("ema" in b)
    for key in ("model", "batches", "ema") if "ema" in a else ("model", "batches"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]) if torch.is_tensor(a[key][name]) \
                else a[key][name] == b[key][name], name
    assert torch.equal(a["lossi"], b["lossi"]) and str(a["optimizer"]) == str(b["optimizer"])
    assert torch.equal(a["rng"], b["rng"])


@pytest.mark.parametrize("kind, extra", [("wavenet", []), ("wavenet", ["--ema", "0.9"]), ("mlp", []),
                                         pytest.param("lstm", [], marks=pytest.mark.slow),
                                         pytest.param("conv", [], marks=pytest.mark.slow)],
                         ids=["wavenet", "wavenet-ema", "mlp", "lstm", "conv"])
def test_a_budget_run_is_the_fixed_step_run_it_recorded(kind, extra, tmp_path, tiny_file, cli, scores_of):
    """The budget's steps and evaluation interval are recorded in the checkpoint with the
    measured rate; training that many steps with no budget gives the same weights, batches,
    losses, optimizer, random stream and weight average (--ema), bit for bit: measuring the
    rate left no trace."""
    code, out, err = cli("train", "--model", kind, "-i", tiny_file, "-o", tmp_path / "budget",
                         "--time-budget", "0.03", *SHAPES[kind], *SMALL, *extra)
    assert code == 0, err
    a = RunDir(tmp_path / "budget").load()
    cfg, budget = a["train_config"], a["budget"]
    # the fake clock: 3 chunks of PROBE_CHUNK steps in 0.3 s, 0.4 s from the first reading
    probe_steps = 3 * wavenet.train.PROBE_CHUNK
    assert budget == dict(minutes=0.03, step_s=pytest.approx(0.3 / probe_steps), probe_s=pytest.approx(0.4),
                          probe_steps=probe_steps)
    assert cfg["time_budget"] == 0.03 and cfg["max_steps"] == a["step"] \
        == int((0.03 * 60 - budget["probe_s"]) / budget["step_s"]) >= 139
    assert cfg["eval_interval"] == -(-cfg["max_steps"] // 10)  # ten evaluations
    assert f"{cfg['max_steps']:,} steps at" in out and "of a 0.03 min budget" in out
    assert budget["probe_s"] + cfg["max_steps"] * budget["step_s"] <= 0.03 * 60 + 1e-9
    metrics = [json.loads(line) for line in (tmp_path / "budget" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics][-1] == cfg["max_steps"]
    clocks = [m["train_s"] for m in metrics]
    assert clocks == sorted(clocks) and clocks[0] >= budget["probe_s"]  # the probe is on the clock
    fixed = ["--max-steps", cfg["max_steps"], "--eval-interval", cfg["eval_interval"]]
    code, _, err = cli("train", "--model", kind, "-i", tiny_file, "-o", tmp_path / "fixed", *SHAPES[kind],
                       *SMALL, *extra, *fixed)
    assert code == 0, err
    b = RunDir(tmp_path / "fixed").load()
    _same_run(a, b)
    assert scores_of(tmp_path / "budget") == scores_of(tmp_path / "fixed")


def test_a_budget_run_resumes_exactly(tmp_path, tiny_file, cli, monkeypatch, scores_of):
    """Killed after its first checkpoint, a budget run resumes with its recorded steps (no
    new measurement) and ends where the uninterrupted run ends."""
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
                       "--time-budget", "0.03", "--dropout", "0.2", *SHAPES["wavenet"], *SMALL)
    assert code == 0, err
    monkeypatch.setattr(ckpt_io, "save_checkpoint", real_save)
    a = RunDir(tmp_path / "straight").load()
    assert 0 < copied[0] < a["step"]
    code, out, err = cli("train", "-o", resumed, "--resume")
    assert code == 0 and "resuming" in out and "time budget" not in out, err
    b = RunDir(resumed).load()
    assert b["step"] == a["step"] and b["budget"] == a["budget"] and b["train_config"] == a["train_config"]
    _same_run(a, b)
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
