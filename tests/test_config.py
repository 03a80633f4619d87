"""Configs: one home for every default; the CLI, the models and checkpoints built from them."""

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from wavenet.cli import add_config_flags, build_parser, flag_name
from wavenet.config import (
    MODEL_CONFIGS,
    RECIPES,
    ConvConfig,
    MLPConfig,
    TrainConfig,
    config_from_record,
    flag_fields,
    model_config,
    model_record,
)
from wavenet.errors import WavenetError
from wavenet.models import ConvWaveNet, HierarchicalMLP, build_model


def test_models_take_their_defaults_from_the_configs():
    for cls, model in ((MLPConfig, HierarchicalMLP(27)), (ConvConfig, ConvWaveNet(27))):
        assert model.config == cls() and model.kind == cls.kind
        built = build_model(cls(), 27)
        assert type(built) is type(model) and built.config == model.config
    assert sum(p.numel() for p in build_model(MLPConfig(), 27).parameters()) == 76_579


def test_records_round_trip_and_name_what_is_wrong():
    config = ConvConfig(block_size=16, n_embd=5, n_hidden=7)
    record = model_record(config, 30)
    assert record == {"kind": "conv", "vocab_size": 30, "block_size": 16, "n_embd": 5, "n_hidden": 7}
    assert config_from_record(record) == (config, 30)
    assert build_model(record).config == config
    with pytest.raises(WavenetError, match="unknown model kind 'rnn'"):
        config_from_record({**record, "kind": "rnn"})
    with pytest.raises(WavenetError, match="dilations does not apply to a 'conv' model"):
        model_config("conv", dilations=3)
    with pytest.raises(WavenetError, match="no valid vocab_size"):
        config_from_record({"kind": "mlp"})


@pytest.mark.parametrize("make, param", [
    (lambda: MLPConfig(block_size=12), "block_size"),
    (lambda: ConvConfig(n_hidden=0), "n_hidden"),
    (lambda: TrainConfig(batch_size=1), "batch_size"),
    (lambda: TrainConfig(learning_rate=float("nan")), "learning_rate"),
    (lambda: TrainConfig(decay_at=-0.1), "decay_at"),
    (lambda: TrainConfig(eval_interval=0), "eval_interval"),
])
def test_bad_values_name_the_parameter_in_library_words(make, param):
    with pytest.raises(WavenetError) as info:
        make()
    assert info.value.param == param and str(info.value).startswith(param + " ")
    assert info.value.renamed(flag_name).startswith("--" + param.replace("_", "-") + " ")


def test_renaming_touches_the_parameter_not_a_path_that_contains_its_name():
    e = WavenetError("/max_length/a.txt, line 2: longer than max_length 5 characters", param="max_length")
    assert e.renamed(flag_name) == "/max_length/a.txt, line 2: longer than --max-length 5 characters"
    e = WavenetError("loss became nan at step 3: try a lower learning_rate; the last good checkpoint of "
                     "step 2 is kept (runs/learning_rate/checkpoint.pt)", param="learning_rate")
    assert e.renamed(flag_name) == ("loss became nan at step 3: try a lower --learning-rate; the last good "
                                    "checkpoint of step 2 is kept (runs/learning_rate/checkpoint.pt)")
    e = WavenetError("learning_rate.txt, line 2: try a lower learning_rate.", param="learning_rate")
    assert e.renamed(flag_name) == "learning_rate.txt, line 2: try a lower --learning-rate."
    e = WavenetError("num must be at least 1", param="num")
    assert e.renamed(flag_name) == "-n/--num-samples must be at least 1"
    assert WavenetError("no parameter here").renamed(flag_name) == "no parameter here"


def test_cli_help_shows_each_kinds_defaults_from_the_configs():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    text = " ".join(text.split())
    assert (f"[conv {RECIPES['conv'].max_steps}, mlp {RECIPES['mlp'].max_steps}, "
            f"wavenet {RECIPES['wavenet'].max_steps}, lstm {RECIPES['lstm'].max_steps}, "
            f"gru {RECIPES['gru'].max_steps}, transformer {RECIPES['transformer'].max_steps}]") in text
    assert "dropout probability in training [wavenet 0.1, lstm 0.45, gru 0.45, transformer 0.2]" in text
    # one field, two meanings: each with its kinds
    assert ("wavenet: blocks per dilation cycle (dilations 1, 2, 4, ...); lstm, gru, transformer: layers "
            "[wavenet 3, lstm 2, gru 2, transformer 4]") in text
    assert (f"context length, a power of two [conv {ConvConfig().block_size}, "
            f"mlp {MLPConfig().block_size}]") in text
    assert "--model {" + ",".join(MODEL_CONFIGS) + "}" in text


def test_kinds_that_do_not_share_fields_get_flags_for_each():
    @dataclass(frozen=True)
    class OtherConfig:
        kind: ClassVar[str] = "other"
        block_size: int = field(default=64, metadata={"help": "receptive field"})
        dropout: float = field(default=0.1, metadata={"help": "dropout rate"})

    parser = argparse.ArgumentParser()
    add_config_flags(parser, {"conv": ConvConfig(), "other": OtherConfig()})
    text = " ".join(parser.format_help().split())
    assert "[conv 8, other 64]" in text  # block_size: both kinds, different defaults
    assert "dropout rate [other 0.1]" in text and "hidden width [conv 128]" in text
    args = parser.parse_args(["--dropout", "0.2"])
    assert (args.dropout, args.block_size) == (0.2, None)  # None: not given, the kind's default applies


def test_train_flags_cover_every_train_config_field():
    """Every field is a flag but those the package writes itself (a budget's schedule knots)."""
    args = build_parser().parse_args(["train"])
    assert all(getattr(args, f.name) is None for f in flag_fields(TrainConfig))
    assert [f.name for f in dataclasses.fields(TrainConfig) if f not in flag_fields(TrainConfig)] \
        == ["schedule_knots"] and not hasattr(args, "schedule_knots")
    assert all(hasattr(args, f.name) for cls in MODEL_CONFIGS.values() for f in dataclasses.fields(cls))
