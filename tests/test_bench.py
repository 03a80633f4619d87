"""The benchmark harness on a tiny configuration: it runs, compares like with like, reports."""

import dataclasses
import json

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
    log = tmp_path / "perf_log.md"
    written = bench.write_outputs(results, tmp_path / "out", log)
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["rows"][0]["block"] == 4
    bench.write_outputs(results, tmp_path / "out", log)
    rows = [line for line in log.read_text().splitlines() if line.startswith("| 20")]
    assert len(rows) == 2 and log in written
