"""The CLI end to end on a tiny file, in-process (fast) and once as `python -m wavenet`."""

import json
import subprocess
import sys

import pytest

import wavenet
from wavenet.evaluate import split_loss
from wavenet.rundir import RunDir, load_split

# 60 steps, val loss and a checkpoint at 30 and 60, after the shared tiny flags
STEPS = ["--max-steps", "60", "--eval-interval", "30"]


def test_train_sample_eval(tmp_path, tiny_file, cli, tiny_flags):
    work = tmp_path / "run"
    code, out, err = cli("train", "--model", "mlp", "-i", tiny_file, "-o", work, *tiny_flags, *STEPS,
                         "-n", "5")
    assert code == 0, err
    assert "train loss" in out and "val loss" in out
    marks = [line.split()[0] for line in out.splitlines()]
    assert sum(mark in ("train", "val/test", "new") for mark in marks) >= 5
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [30, 60]
    code, out, err = cli("sample", "-o", work, "-n", "7", "--seed", "1", "--prefix", "em")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 7 and all(line.split()[1].startswith("em") for line in lines)
    assert cli("sample", "-o", work, "-n", "7", "--seed", "1", "--prefix", "em")[1] == out
    code, out, err = cli("eval", "-o", work)
    assert code == 0 and [line[:11].strip() for line in out.splitlines()] == [
        "train", "val", "test", "val unseen", "test unseen"]
    code, only_val, err = cli("eval", "-o", work, "--splits", "val")  # tuning reads val, never test
    assert code == 0 and [line[:11].strip() for line in only_val.splitlines()] == ["val", "val unseen"]
    assert set(only_val.splitlines()) <= set(out.splitlines())
    code, _, err = cli("eval", "-o", work, "--splits", "val,tset")
    assert code == 2 and err.strip().splitlines() == [
        "wavenet: error: --splits must name train, val or test, comma-separated, got 'val,tset'"]


@pytest.mark.parametrize("argv, message", [
    (["train", "-i", "{tmp}/missing.txt"], "missing.txt: no such file"),
    (["train", "-i", "{tmp}"], "is a directory"),
    (["train", "--block-size", "6"], "power of two"),
    (["train", "--batch-size", "1"], "--batch-size must be at least 2"),
    (["train", "--learning-rate", "-1"], "--learning-rate must be a positive number"),
    (["train", "--decay-at", "1.5"], "--decay-at must be a fraction"),
    (["train", "--max-steps", "0"], "--max-steps must be at least 1"),
    (["train", "--model", "rnn"], "invalid choice: 'rnn'"),
    (["train", "--n-hidden", "0"], "--n-hidden must be at least 1, got 0"),
    (["train", "--group-by-length", "-1"], "--group-by-length must be at least 0"),
    (["train", "--max-length", "0"], "--max-length must be at least 1, got 0"),
    (["train", "-n", "-1"], "-n/--num-samples must be 0 or more"),
    (["train", "--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (["train", "--resume"], "--resume: no checkpoint"),
    (["train", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["sample"], "no checkpoint"),
    (["eval"], "no checkpoint"),
    (["frobnicate"], "invalid choice"),
    (["bench", "--blocks", "8,12"], "--blocks must be powers of two >= 2, got 12"),
    (["bench", "--blocks", "eight"], "--blocks must be comma-separated integers"),
    (["bench", "--repeats", "0"], "--repeats must be at least 1"),
    (["bench", "--speedrun", "--full"], "--speedrun takes no --full, --blocks or --repeats"),
])
def test_user_mistakes_are_one_line_and_exit_2(tmp_path, argv, message, cli, one_line_error):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] in ("train", "sample", "eval"):
        argv += ["-o", str(tmp_path / "run")]
    code, out, err = cli(*argv)
    one_line_error(code, err, message)


def test_bad_sampling_flags(tmp_path, tiny_file, cli, tiny_flags, one_line_error):
    work = tmp_path / "run"
    assert cli("train", "--model", "mlp", "-i", tiny_file, "-o", work, *tiny_flags, *STEPS, "-n", "1")[0] == 0
    for flags, message in ((["-n", "0"], "-n/--num-samples must be at least 1, got 0"),
                           (["--temperature", "0"], "--temperature must be a positive number"),
                           (["--top-k", "0"], "--top-k must be between 1 and the vocabulary size"),
                           (["--prefix", "Zz!"], "'!', 'Z'")):
        one_line_error(*cli("sample", "-o", work, *flags)[::2], message)


def test_existing_run_is_not_overwritten(tmp_path, tiny_file, cli, tiny_flags):
    work = tmp_path / "run"
    assert cli("train", "--model", "mlp", "-i", tiny_file, "-o", work, *tiny_flags, *STEPS, "-n", "1")[0] == 0
    before = (work / "checkpoint.pt").read_bytes()
    code, _, err = cli("train", "--model", "mlp", "-i", tiny_file, "-o", work, *tiny_flags, *STEPS)
    assert code == 2 and "exists: pass --resume to continue it, or choose another -o/--work-dir" in err, err
    assert (work / "checkpoint.pt").read_bytes() == before


def test_python_dash_m_entry_point(tmp_path):
    argv = [sys.executable, "-m", "wavenet", "train", "--block-size", "5", "-o", str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 2
    expected = "wavenet: error: --block-size must be a power of two >= 2 (2, 4, 8, 16, ...), got 5"
    assert proc.stderr.strip() == expected


def test_conv_is_the_default_and_convert_keeps_the_loss(tmp_path, tiny_file, cli, tiny_flags):
    work = tmp_path / "conv"
    code, out, err = cli("train", "-i", tiny_file, "-o", work, *tiny_flags, *STEPS, "-n", "3")
    assert code == 0, err
    assert out.startswith("conv model")
    assert cli("sample", "-o", work, "-n", "4", "--seed", "2")[0] == 0

    mlp_dir, conv_dir = tmp_path / "mlp", tmp_path / "converted"
    code, _, err = cli("train", "--model", "mlp", "-i", tiny_file, "-o", mlp_dir, *tiny_flags, *STEPS)
    assert code == 0, err
    code, out, err = cli("convert", "-o", mlp_dir, "--into", conv_dir)
    assert code == 0, err
    mlp, vocab = wavenet.load(mlp_dir)
    conv, _ = wavenet.load(conv_dir)
    assert (mlp.kind, conv.kind) == ("mlp", "conv")
    for words in load_split(RunDir(conv_dir).load(kind="conv")["data"]):
        assert abs(split_loss(conv, words, vocab) - split_loss(mlp, words, vocab)) < 1e-6
    assert cli("eval", "-o", conv_dir)[1] == cli("eval", "-o", mlp_dir)[1]
    code, _, err = cli("convert", "-o", work)
    assert code == 2 and "holds a 'conv' model, expected 'mlp'" in err
    code, _, err = cli("train", "-o", conv_dir, "--resume")
    assert code == 2 and "no training state" in err


def test_the_loss_curve_is_drawn_or_the_run_says_why(tmp_path, tiny_file, cli, tiny_flags, monkeypatch):
    """loss.png: the training curve and the val points, a PNG, said so; without matplotlib,
    one line says why there is none (and the run still succeeds)."""
    pytest.importorskip("matplotlib")  # the dev extra has it: CI runs this
    code, out, err = cli("train", "-i", tiny_file, "-o", tmp_path / "a", *tiny_flags)
    assert code == 0, err
    png = (tmp_path / "a" / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert f"loss curve: {tmp_path / 'a' / 'loss.png'}" in out
    for name in ("matplotlib", "matplotlib.figure"):  # importing them now raises ImportError
        monkeypatch.setitem(sys.modules, name, None)
    code, out, err = cli("train", "-i", tiny_file, "-o", tmp_path / "b", *tiny_flags)
    assert code == 0, err
    assert not (tmp_path / "b" / "loss.png").exists()
    assert 'loss curve not drawn: matplotlib is not installed (pip install -e ".[plot]")' in out
