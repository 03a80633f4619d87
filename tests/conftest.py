"""Shared fixtures. Helpers are fixtures, not imports: a test asks for what it uses."""

import contextlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import wavenet.checkpoint as ckpt_io
from wavenet.cli import main
from wavenet.data import Vocab, load_words

NAMES = Path(__file__).resolve().parent.parent / "data" / "names.txt"
TINY_WORDS = ["emma", "olivia", "ava", "isabella", "sophia", "charlotte", "mia", "amelia", "harper",
              "evelyn", "abigail", "emily", "elizabeth", "mila", "ella", "avery", "sofia", "camila",
              "aria", "scarlett", "victoria", "madison", "luna", "grace", "chloe", "penelope",
              "layla", "riley", "zoey", "nora", "lily", "eleanor", "hannah", "lillian", "addison"]


@pytest.fixture(scope="session")
def names_path():
    """The bundled data/names.txt (the lecture's 32,033 names)."""
    return NAMES


@pytest.fixture(scope="session")
def names():
    return load_words(NAMES)


@pytest.fixture(scope="session")
def vocab(names):
    return Vocab.from_words(names)


@pytest.fixture
def tiny_file(tmp_path):
    """A small names file: enough lines for an 80/10/10 split."""
    path = tmp_path / "tiny.txt"
    path.write_text("\n".join(TINY_WORDS) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_flags():
    """`wavenet train` flags for a tiny, fast run: 40 steps, a checkpoint every 10, no samples.
    A test may add its own after these (argparse keeps the last value of a flag)."""
    return ["--max-steps", "40", "--eval-interval", "10", "--batch-size", "8", "--n-embd", "4",
            "--n-hidden", "8", "--no-progress", "-n", "0"]


@pytest.fixture
def cli(capsys):
    """The CLI in-process: `cli("train", "-o", path, ...)` -> (exit code, stdout, stderr)."""
    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture(scope="session")
def scores_of():
    """`scores_of(work)`: each record of a run's metrics.jsonl without its clock (train_s,
    eval_s: seconds, which no two runs share), for comparing two runs."""
    def scores(work):
        records = [json.loads(line) for line in (Path(work) / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("train_s", "eval_s")} for r in records]
    return scores


@pytest.fixture(scope="session")
def same_run():
    """`same_run(a, b)`: two checkpoints (dicts) hold the same run bit for bit: weights and
    buffers, the batch source, the weight average if any, the loss history, the optimizer
    and the random stream."""
    def check(a: dict, b: dict) -> None:
        assert ("ema" in a) == ("ema" in b)
        for key in ("model", "batches", "ema") if "ema" in a else ("model", "batches"):
            for name in a[key]:
                assert torch.equal(a[key][name], b[key][name]) if torch.is_tensor(a[key][name]) \
                    else a[key][name] == b[key][name], name
        assert torch.equal(a["lossi"], b["lossi"]) and str(a["optimizer"]) == str(b["optimizer"])
        assert torch.equal(a["rng"], b["rng"])
    return check


@pytest.fixture(scope="session")
def one_line_error():
    """Checks a user mistake's outcome: exit 2, the message, one line, no traceback."""
    def check(code, err, message):
        assert code == 2, err
        assert message in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return check


@pytest.fixture(scope="session")
def randomize_batchnorm():
    """Random running statistics and affine parameters, so that a dropped, misplaced or
    mis-transferred BatchNorm changes the output."""
    def randomize(model, generator):
        with torch.no_grad():
            for norm in model.norm:
                norm.running_mean.normal_(generator=generator)
                norm.running_var.uniform_(0.3, 3.0, generator=generator)
                norm.weight.normal_(generator=generator)
                norm.bias.normal_(generator=generator)
        return model
    return randomize


@pytest.fixture
def copy_checkpoint_at(monkeypatch):
    """`with copy_checkpoint_at(step, into): ...`: while inside, the checkpoint and metrics a
    run writes at `step` are also copied into the directory `into`, the state a run killed
    right after that checkpoint would leave (for resume tests)."""
    @contextlib.contextmanager
    def copying(step, into):
        into.mkdir(exist_ok=True)
        real_save = ckpt_io.save_checkpoint

        def save_and_copy(path, state):
            real_save(path, state)
            if state["step"] == step:
                shutil.copy(path, into / "checkpoint.pt")
                shutil.copy(path.parent / "metrics.jsonl", into / "metrics.jsonl")

        monkeypatch.setattr(ckpt_io, "save_checkpoint", save_and_copy)
        try:
            yield
        finally:
            monkeypatch.setattr(ckpt_io, "save_checkpoint", real_save)
    return copying
