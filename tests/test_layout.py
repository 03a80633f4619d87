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


def test_every_package_is_in_the_distribution():
    """pyproject.toml lists each folder of the package that holds an __init__.py, so a plain
    (non-editable) `pip install .` ships all of them (it once lacked wavenet/models)."""
    import ast
    import re
    from pathlib import Path
    root = Path(wavenet.__file__).resolve().parent.parent
    listed = re.search(r"^packages = (\[.*\])$", (root / "pyproject.toml").read_text(), re.M).group(1)
    found = [str(p.parent.relative_to(root)).replace("/", ".")
             for p in (root / "wavenet").rglob("__init__.py")]
    assert sorted(ast.literal_eval(listed)) == sorted(found)
