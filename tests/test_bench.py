"""The benchmark harness on a tiny configuration: it runs, compares like with like, reports."""

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import pytest

from wavenet import bench
from wavenet.config import MLPConfig
from wavenet.models import ConvWaveNet, HierarchicalMLP


def test_flops_per_target_from_layer_shapes():
    mlp = HierarchicalMLP(27)  # defaults: the lecture's widths
    conv = ConvWaveNet(27)
    # MLP: 4 fusions of 48 -> 128, 2 + 1 of 256 -> 128, head 128 -> 27; conv: one of each
    assert bench.flops_per_target(mlp) == 2 * (4 * 48 * 128 + 3 * 256 * 128 + 128 * 27)
    assert bench.flops_per_target(conv) == 2 * (48 * 128 + 2 * 256 * 128 + 128 * 27)
    big = HierarchicalMLP(27, block_size=64), ConvWaveNet(27, block_size=64)
    assert abs(bench.flops_per_target(big[0]) / bench.flops_per_target(big[1]) - 7.01) < 0.01


def test_forward_flops_of_every_kind_from_layer_shapes():
    """Per target position, 2 x multiply-adds of each kind's matrix products at its default
    shape (vocabulary 27), written out from the architectures, not from the code."""
    from wavenet.bench_kinds import forward_flops
    from wavenet.config import model_config
    from wavenet.models import build_model
    flops = {k: forward_flops(build_model(model_config(k), 27))
             for k in ("wavenet", "lstm", "gru", "transformer")}
    C, S = 128, 384  # 9 blocks of conv 2C -> 2C and 1x1 C -> C + S (the last: C -> S), then S -> 27
    assert flops["wavenet"] == 2 * (9 * 2 * C * 2 * C + 8 * C * (C + S) + C * S + S * 27)
    paper = forward_flops(build_model(model_config("wavenet", head_layers=2), 27))  # and S -> S before it
    assert paper == flops["wavenet"] + 2 * S * S
    H = 256  # two layers, 4 (LSTM) or 3 (GRU) gates over [input 256 | state 256], then 256 -> 27
    assert flops["lstm"] == 2 * (2 * 4 * H * (H + H) + H * 27)
    assert flops["gru"] == 2 * (2 * 3 * H * (H + H) + H * 27)
    E = 128  # four blocks of 3E + E (attention) and 4E + 4E (MLP) products of E, then E -> 27
    assert flops["transformer"] == 2 * (4 * 12 * E * E + E * 27)


def test_every_kind_side_by_side(names):
    from wavenet import bench_kinds
    result = bench_kinds.compare(names[:600], kinds=("mlp", "wavenet", "gru", "transformer"), repeats=1,
                                 steps=2, sample_names=4)
    assert result["gemm_gflops"] > 0
    assert list(result["kinds"]) == ["mlp", "wavenet", bench_kinds.AUTOGRAD, "gru", "transformer"]
    for label, r in result["kinds"].items():
        assert r["train_targets_per_s"] > 0 and r["bytes_per_target"] > 0
        if label != bench_kinds.AUTOGRAD:  # the WaveNet's reference step: training only
            assert r["eval_targets_per_s"] > 0 and r["sample_names_per_s"] > 0
        assert r["train_fraction"] == r["train_gflops"] / result["gemm_gflops"]
    fused, autograd = result["kinds"]["wavenet"], result["kinds"][bench_kinds.AUTOGRAD]
    assert fused["targets_per_step"] == autograd["targets_per_step"]  # the same batches, two steps
    assert fused["bytes_per_target"] < 1.01 * autograd["bytes_per_target"]  # saves what autograd saves
    assert result["kinds"]["mlp"]["targets_per_step"] == 32  # the lecture's windows
    assert 64 * 2 < result["kinds"]["wavenet"]["targets_per_step"] < 64 * 16  # 64 whole names
    table = bench_kinds.markdown(result)
    assert "| transformer |" in table and f"| {bench_kinds.AUTOGRAD} |" in table


def test_full_names_are_deterministic_and_keep_every_target(names):
    a, b = bench.full_names(names[:100]), bench.full_names(names[:100])
    assert a == b and " ".join(a) == " ".join(names[:100])
    assert all(2 <= len(line.split(" ")) <= 4 for line in a[:-1])


def test_tiny_run_reports_everything(names, tmp_path):
    cfg = dataclasses.replace(bench.QUICK, blocks=(4,), repeats=1, eval_words=40, sample_names=8,
                              lecture_names=2, train_positions=(32,), model=MLPConfig(n_embd=4, n_hidden=8))
    results = bench.run(names[:400], cfg, log=lambda line: None)
    assert [(r["dataset"], r["block"]) for r in results["rows"]] == [("names", 4), ("fullnames", 4)]
    for row in results["rows"]:
        assert row["sample"]["identical_names"], "cached, full and window sampling must agree"
        assert row["eval"]["mlp_s"] > 0 and row["eval"]["conv_s"] > 0
        assert row["train"][0]["conv_bytes_per_pos"] > 0
    table = bench.markdown(results)
    assert "| names | 4 |" in table and "| fullnames | 4 |" in table
    from wavenet import bench_kinds  # what `wavenet bench` adds after the MLP-vs-conv rows
    results["kinds"] = bench_kinds.compare(names[:400], kinds=("lstm", "conv"), repeats=1, steps=2,
                                           sample_names=4)
    assert "| lstm | 1,066,523 | 64 |" in bench_kinds.markdown(results["kinds"])
    line = bench.log_line(results)
    assert "training targets/s: lstm " in line
    # every step size's training speed-up, beside the FLOP ratio, for each row
    assert len(re.findall(r"train [0-9.]+x( busy)? @32 \(flop [0-9.]+x; the conv at [0-9]+% of GEMM @32\)",
                          line)) == 2, line
    log = tmp_path / "perf_log.md"
    written = bench.write_outputs(results, tmp_path / "out", log)
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["rows"][0]["block"] == 4
    bench.write_outputs(results, tmp_path / "out", log)
    rows = [line for line in log.read_text().splitlines() if line.startswith("| 20")]
    assert len(rows) == 2 and log in written


def test_tiny_run_measures_the_machine_and_each_training_path(names):
    cfg = dataclasses.replace(bench.QUICK, blocks=(8,), repeats=1, datasets=("names",), eval_words=20,
                              sample_names=2, lecture_names=1, train_positions=(64,),
                              model=MLPConfig(n_embd=4, n_hidden=16))
    t = bench.run(names[:300], cfg, log=lambda line: None)["rows"][0]["train"][0]
    assert t["gemm_gflops"] > 0
    for name in ("mlp", "conv", "conv_ref"):
        assert t[f"{name}_gflops"] > 0 and t[f"{name}_fraction"] == t[f"{name}_gflops"] / t["gemm_gflops"]
    assert t["speedup"] == t["conv_pos_per_s"] / t["mlp_pos_per_s"]


def test_speedrun_times_every_recipe_and_keeps_the_benchmark(names, tmp_path, monkeypatch):
    """A short speedrun of three kinds: val every 5% of each run, the first point at or below each target,
    and bench.json keeps the other section when either kind of run writes it."""
    from wavenet import speedrun
    from wavenet.config import TrainConfig
    monkeypatch.setattr(speedrun, "TARGET", 3.2)  # reachable in a few dozen steps
    recipes = {"mlp": TrainConfig(max_steps=40, batch_size=16),
               "conv": TrainConfig(max_steps=20, batch_size=4),
               "lstm": TrainConfig(max_steps=20, batch_size=4, optimizer="adamw", learning_rate=1e-2)}
    monkeypatch.setattr(speedrun, "TARGETS", (3.2, 3.0, 0.5))
    result = speedrun.speedrun(names[:300], log=lambda line: None, recipes=recipes,
                               kinds=("mlp", "conv", "lstm"))
    assert list(result["runs"]) == ["mlp", "conv", "lstm"]
    for kind, steps in (("mlp", 40), ("conv", 20), ("lstm", 20)):
        run = result["runs"][kind]
        assert [s for s, _, _ in run["curve"]] == list(range(steps // 20, steps + 1, steps // 20))
        seconds = [t for _, t, _ in run["curve"]]
        assert seconds == sorted(seconds) and seconds[0] > 0
        first = next(p for p in run["curve"] if p[2] <= 3.2)
        assert run["reached"] == run["reached_at"]["3.2"]
        assert run["reached"] == dict(step=first[0], seconds=first[1], val=first[2])
        assert run["reached_at"]["0.5"] is None  # not reached: said so, not dropped
    reached = {kind: run["reached"]["seconds"] for kind, run in result["runs"].items()}
    assert result["ratio"] == reached["mlp"] / reached["conv"]
    table = speedrun.markdown(result)
    assert "| lecture (MLP) | 40 |" in table and "| lstm | 20 |" in table and "first val <= 0.5 |" in table
    out, log = tmp_path / "out", tmp_path / "log.md"
    (out).mkdir()
    (out / "bench.json").write_text(json.dumps({"mode": "quick", "rows": [1, 2]}))
    bench.write_outputs(dict(mode="speedrun", machine=bench.machine("cpu"), speedrun=result), out, log)
    saved = json.loads((out / "bench.json").read_text())
    assert saved["rows"] == [1, 2] and saved["speedrun"]["runs"]["conv"]["recipe"]["max_steps"] == 20
    assert "| speedrun |" in log.read_text()


def test_a_busy_race_is_run_again_and_the_calmest_is_reported(names, monkeypatch):
    """The probes, not the models' times, decide: a race whose matrix product ran at half
    its best rate is run again; after RACES busy races the calmest is reported, marked."""
    cfg = dataclasses.replace(bench.QUICK, repeats=1, model=MLPConfig(n_embd=4, n_hidden=8))
    words, vocab = bench.datasets(names[:200], ("names",))["names"]
    mlp, conv = bench.pair(vocab, 4, cfg)
    base = {"mlp": 1.0, "conv": 0.5, "conv_ref": 0.8, "batch": 0.1, "gemm": 0.01, "small": 0.01}

    def scripted(slow_gemm):
        calls = iter(slow_gemm)

        def fake_race(fns, repeats, device):
            slow = next(calls)
            return {**base, "gemm": base["gemm"] * slow, "conv": base["conv"] * slow}
        return fake_race

    monkeypatch.setattr(bench, "race", scripted([1.0, 2.0, 1.05]))  # calm, then busy, then calm
    calm = {}
    first = bench.bench_train(mlp, conv, words, vocab, 32, cfg, calm)
    second = bench.bench_train(mlp, conv, words, vocab, 32, cfg, calm)
    assert first["races"] == 1 and second["races"] == 2 and second["calm"] > 0.9
    # the calm race's figures, not the busy one's
    assert second["speedup"] == pytest.approx(first["speedup"] / 1.05, rel=1e-12)
    monkeypatch.setattr(bench, "race", scripted([1.5, 2.0, 1.2]))  # never calm: the best of three
    third = bench.bench_train(mlp, conv, words, vocab, 32, cfg, calm)
    assert third["races"] == bench.RACES and abs(third["calm"] - 1 / 1.2) < 1e-12
    assert third["speedup"] == pytest.approx(first["speedup"] / 1.2, rel=1e-12)


def test_a_users_benchmark_leaves_the_checkout_clean(tmp_path):
    """`wavenet bench` writes into --out (bench/, ignored by git) and appends to a
    performance log only when --log names one."""
    from wavenet.cli import build_parser

    args = build_parser().parse_args(["bench"])
    assert args.out == "bench" and args.log is None
    results = dict(mode="speedrun", machine=bench.machine("cpu"), speedrun={"runs": {}})
    written = bench.write_outputs(results, tmp_path / "bench", None)
    assert written == [tmp_path / "bench" / "bench.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]  # no log beside it
    repo = Path(__file__).resolve().parent.parent
    ignored = subprocess.run(["git", "check-ignore", "-q", "bench/bench.json"], cwd=repo)
    assert ignored.returncode == 0, "bench/ is not ignored by git"
