"""The package's layout: every public name where the README says, and every name's old
import path still working after the move into models/ and batches.py."""

import importlib

import pytest

import wavenet
from wavenet import batches, models


@pytest.mark.parametrize("old, name, new", [
    ("wavenet.gated", "WaveNet", models.WaveNet),
    ("wavenet.gated", "WaveNetCache", models.RingCache),
    ("wavenet.packed", "pack", batches.pack),
    ("wavenet.packed", "PackedNames", batches.PackedNames),
    ("wavenet.packed", "pack_padded", batches.pack_padded),
    ("wavenet.packed", "FusedTree", models.tree_fused.FusedTree),
    ("wavenet.data", "pad_names", batches.pad_names),
    ("wavenet.data", "build_windows", batches.build_windows),
    ("wavenet.data", "window_starts", batches.window_starts),
    ("wavenet.train", "NameBatches", batches.NameBatches),
    ("wavenet.train", "WindowBatches", batches.WindowBatches),
    ("wavenet.train", "make_batches", batches.make_batches),
    ("wavenet.evaluate", "eval_batches", batches.eval_batches),
    ("wavenet.models", "ConvCache", models.RingCache),
    ("wavenet", "WaveNet", models.WaveNet),
    ("wavenet", "pad_names", batches.pad_names),
])
def test_old_import_paths_still_work(old, name, new):
    assert getattr(importlib.import_module(old), name) is new


def test_a_missing_name_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        wavenet.data.nothing_here  # noqa: B018


def test_every_model_kind_has_the_same_three_paths():
    """The reference forward, the packed fast path and cached generation, on every
    convolutional kind; `boundary_states` returns (inputs per layer, logits) for each."""
    for kind in ("conv", "wavenet"):
        cls = models.MODELS[kind]
        model = cls(27).eval()
        for attribute in ("forward", "step", "new_cache", "boundary_states", "dilations"):
            assert hasattr(model, attribute), (kind, attribute)
        inputs, logits = model.boundary_states()
        assert len(inputs) == len(model.dilations) and logits.shape == (27,)
