"""Checkpoints written by main before the config rework (tests/fixtures/main-64f41da, see its
README) still load, sample, evaluate and resume, with the same output as the code that wrote
them: eval.txt and samples.txt were printed by that code."""

import shutil
from pathlib import Path

import pytest

import wavenet
from wavenet.config import ConvConfig, MLPConfig

LEGACY = Path(__file__).resolve().parent / "fixtures" / "main-64f41da"


@pytest.mark.parametrize("run, kind", [("mlp", "mlp"), ("conv", "conv"), ("converted", "conv")])
def test_old_checkpoints_evaluate_and_sample_as_before(run, kind, cli):
    data = LEGACY / "tiny.txt"  # the recorded absolute path is another machine's
    code, out, err = cli("eval", "-o", LEGACY / run, "-i", data)
    assert code == 0, err
    # the same losses and target counts, per split, as that code printed (eval now adds the
    # held-out names not in train, and each split's name count, after them)
    def figures(text):
        return [(line.split()[0], line.split()[2], line.split()[3].strip("(,"))
                for line in text.splitlines()[:3]]
    assert figures(out) == figures((LEGACY / run / "eval.txt").read_text())
    assert [line[:11].strip() for line in out.splitlines()][3:] == ["val unseen", "test unseen"]
    code, out, err = cli("sample", "-o", LEGACY / run, "-n", "8", "--seed", "1", "-i", data)
    assert code == 0, err
    assert out == (LEGACY / run / "samples.txt").read_text()
    model, vocab = wavenet.load(LEGACY / run)
    assert model.kind == kind and not model.training and len(vocab) == 22
    assert model.config == {"mlp": MLPConfig, "conv": ConvConfig}[kind](block_size=8, n_embd=4, n_hidden=8)


@pytest.mark.parametrize("run", ["mlp", "conv"])
def test_old_checkpoints_resume(run, tmp_path, cli):
    work = tmp_path / run
    shutil.copytree(LEGACY / run, work)
    code, out, err = cli("train", "-o", work, "--resume", "-i", LEGACY / "tiny.txt", "--no-progress",
                         "-n", "0")
    assert code == 0, err
    assert "resuming" in out and "at step 40" in out  # the run had finished: nothing left to do
    lines = (LEGACY / run / "eval.txt").read_text().splitlines()
    val = next(line for line in lines if line.startswith("val"))
    assert f"val loss   {val.split()[2]}" in out


def test_a_moved_data_file_must_be_the_same_file(tmp_path, cli, one_line_error):
    other = tmp_path / "tiny.txt"
    other.write_text((LEGACY / "tiny.txt").read_text() + "zed\n")
    one_line_error(*cli("eval", "-o", LEGACY / "mlp", "-i", other)[::2],
                   "not the file this run was trained on (SHA-256 differs)")
    one_line_error(*cli("eval", "-o", LEGACY / "mlp", "-i", tmp_path / "gone.txt")[::2],
                   "gone.txt: no such file")
