"""The CLI end to end on a tiny file, in-process (fast) and once as `python -m wavenet`."""

import json
import subprocess
import sys

import pytest

from wavenet.cli import main

TINY = ["--max-steps", "60", "--eval-interval", "30", "--batch-size", "8", "--n-embd", "4", "--n-hidden", "8",
        "--no-progress"]


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_sample_eval(tmp_path, tiny_file, capsys):
    work = tmp_path / "run"
    code, out, err = run(capsys, "train", "--model", "mlp", "-i", tiny_file, "-o", work, *TINY, "-n", "5")
    assert code == 0, err
    assert "train loss" in out and "val loss" in out
    assert len([l for l in out.splitlines() if l.strip().split()[0] in ("train", "val/test", "new")]) >= 5
    records = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [30, 60]
    code, out, err = run(capsys, "sample", "-o", work, "-n", "7", "--seed", "1", "--prefix", "em")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 7 and all(l.split()[1].startswith("em") for l in lines)
    assert run(capsys, "sample", "-o", work, "-n", "7", "--seed", "1", "--prefix", "em")[1] == out
    code, out, err = run(capsys, "eval", "-o", work)
    assert code == 0 and [l.split()[0] for l in out.splitlines()] == ["train", "val", "test"]


@pytest.mark.parametrize("argv, message", [
    (["train", "-i", "{tmp}/missing.txt"], "missing.txt: no such file"),
    (["train", "-i", "{tmp}"], "is a directory"),
    (["train", "--block-size", "6"], "power of two"),
    (["train", "--batch-size", "1"], "--batch-size must be at least 2"),
    (["train", "--learning-rate", "-1"], "--learning-rate must be a positive number"),
    (["train", "--decay-at", "1.5"], "--decay-at must be a fraction"),
    (["train", "--max-steps", "0"], "--max-steps must be at least 1"),
    (["train", "--model", "rnn"], "invalid choice: 'rnn'"),
    (["train", "--resume"], "--resume: no checkpoint"),
    (["train", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["sample"], "no checkpoint"),
    (["eval"], "no checkpoint"),
    (["frobnicate"], "invalid choice"),
    (["bench", "--blocks", "8,12"], "power of two"),
    (["bench", "--blocks", "eight"], "--blocks must be comma-separated integers"),
    (["bench", "--repeats", "0"], "--repeats must be at least 1"),
])
def test_user_mistakes_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] in ("train", "sample", "eval"):
        argv += ["-o", str(tmp_path / "run")]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_sampling_flags(tmp_path, tiny_file, capsys):
    work = tmp_path / "run"
    assert run(capsys, "train", "--model", "mlp", "-i", tiny_file, "-o", work, *TINY, "-n", "1")[0] == 0
    for flags, message in ((["-n", "0"], "at least 1"), (["--temperature", "0"], "--temperature"),
                           (["--top-k", "0"], "--top-k"), (["--prefix", "Zz!"], "'!', 'Z'")):
        code, _, err = run(capsys, "sample", "-o", work, *flags)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_existing_run_is_not_overwritten(tmp_path, tiny_file, capsys):
    work = tmp_path / "run"
    assert run(capsys, "train", "--model", "mlp", "-i", tiny_file, "-o", work, *TINY, "-n", "1")[0] == 0
    before = (work / "checkpoint.pt").read_bytes()
    code, _, err = run(capsys, "train", "--model", "mlp", "-i", tiny_file, "-o", work, *TINY)
    assert code == 2 and "--resume" in err
    assert (work / "checkpoint.pt").read_bytes() == before


def test_python_dash_m_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "wavenet", "train", "--block-size", "5", "-o", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "wavenet: error: --block-size must be a power of two >= 2 (2, 4, 8, 16, ...), got 5"


def test_conv_is_the_default_and_convert_keeps_the_loss(tmp_path, tiny_file, capsys):
    work = tmp_path / "conv"
    code, out, err = run(capsys, "train", "-i", tiny_file, "-o", work, *TINY, "-n", "3")
    assert code == 0, err
    assert out.startswith("conv model")
    assert run(capsys, "sample", "-o", work, "-n", "4", "--seed", "2")[0] == 0

    mlp_dir, conv_dir = tmp_path / "mlp", tmp_path / "converted"
    assert run(capsys, "train", "--model", "mlp", "-i", tiny_file, "-o", mlp_dir, *TINY, "-n", "1")[0] == 0
    code, out, err = run(capsys, "convert", "-o", mlp_dir, "--into", conv_dir)
    assert code == 0, err
    from wavenet.checkpoint import load_checkpoint, model_from_checkpoint
    from wavenet.commands import load_split
    from wavenet.evaluate import split_loss
    mlp, vocab = model_from_checkpoint(load_checkpoint(mlp_dir, kind="mlp"))
    ckpt = load_checkpoint(conv_dir, kind="conv")
    conv, _ = model_from_checkpoint(ckpt)
    for words in load_split(ckpt["data"]):
        assert abs(split_loss(conv, words, vocab) - split_loss(mlp, words, vocab)) < 1e-6
    assert run(capsys, "eval", "-o", conv_dir)[1] == run(capsys, "eval", "-o", mlp_dir)[1]
    code, _, err = run(capsys, "convert", "-o", work)
    assert code == 2 and "holds a 'conv' model, expected 'mlp'" in err
    code, _, err = run(capsys, "train", "-o", conv_dir, "--resume")
    assert code == 2 and "no training state" in err
