import os
import pickle

import pytest
import torch

from wavenet.checkpoint import load_checkpoint, model_from_checkpoint, model_state, save_checkpoint
from wavenet.data import Vocab
from wavenet.errors import CheckpointError
from wavenet.models import HierarchicalMLP

VOCAB = Vocab(list("abcdefghijklmnopqrstuvwxyz"))


def _saved(tmp_path, model=None):
    model = model or HierarchicalMLP(27, n_embd=6, n_hidden=12, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, dict(**model_state(model, VOCAB), step=7))
    return model, path


def test_round_trip_gives_identical_logits(tmp_path):
    model, path = _saved(tmp_path)
    model.train()
    model(torch.randint(0, 27, (64, 8)))  # move the running statistics away from their init
    _, path = _saved(tmp_path, model)
    loaded, vocab = model_from_checkpoint(load_checkpoint(path))
    assert vocab == VOCAB and not loaded.training
    idx = torch.randint(0, 27, (50, 8))
    model.eval()
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], rtol=0, atol=0)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"], "no temporary file may be left behind"


def test_truncated_and_corrupt_files(tmp_path):
    _, path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a run directory, not a checkpoint file"):
        load_checkpoint(tmp_path)


def test_other_model_kind_and_foreign_files(tmp_path):
    _, path = _saved(tmp_path)
    with pytest.raises(CheckpointError, match="holds a 'mlp' model, expected 'conv'"):
        load_checkpoint(path, kind="conv")
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a wavenet checkpoint"):
        load_checkpoint(path)


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_untrusted_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "wavenet-checkpoint", "version": 1, "payload": _Marker(str(marker))}, path,
               pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, path = _saved(tmp_path)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(path, model_state(model, VOCAB))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]
