from __future__ import annotations

import dataclasses

import pytest

from peft_bench.core.config import ConfigError, TrainConfig, from_dict, parse_overrides
from peft_bench.core.registry import METHODS, load_builtin_plugins

load_builtin_plugins()
ALL_METHODS = METHODS.names()


@pytest.mark.parametrize("name", ALL_METHODS)
def test_defaults_have_help_and_round_trip(name):
    cls = METHODS.get(name).config_cls
    cfg = cls()
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{name}.{f.name} has no help"
    assert from_dict(cls, dataclasses.asdict(cfg)) == cfg


@pytest.mark.parametrize("name", ALL_METHODS)
def test_unknown_key_rejected(name):
    with pytest.raises(ConfigError, match=r"unknown key 'learning_rate'.*Valid keys: .*lr"):
        from_dict(METHODS.get(name).config_cls, {"learning_rate": 0.1})


@pytest.mark.parametrize("name", ALL_METHODS)
def test_wrong_type_and_range(name):
    cls = METHODS.get(name).config_cls
    with pytest.raises(ConfigError, match=r"`lr` must be a number, got 'fast'"):
        from_dict(cls, {"lr": "fast"})
    with pytest.raises(ConfigError, match=r"`lr` must be positive, got -1"):
        from_dict(cls, {"lr": -1})


@pytest.mark.parametrize("method,data,message", [
    ("prompt_tuning", {"init": "vocab"}, r"`init` must be one of 'class_label', 'sample_frequent', 'text', 'sample_vocab', 'random', got 'vocab'\. Did you mean 'sample_vocab'"),
    ("prompt_tuning", {"num_virtual_tokens": 0}, r"`num_virtual_tokens` must be in \[1, 1000\], got 0"),
    ("prompt_tuning", {"num_virtual_tokens": 2.5}, r"`num_virtual_tokens` must be an integer, got 2.5"),
    ("lora", {"r": 0}, r"`r` must be a positive integer, got 0"),
    ("lora", {"dropout": 1.5}, r"`dropout` must be in \[0, 1\), got 1.5"),
    ("bottleneck_adapter", {"variant": "parallel"}, r"`variant` must be one of 'houlsby', 'pfeiffer', got 'parallel'"),
    ("bottleneck_adapter", {"reduction_factor": 0}, r"`reduction_factor` must be an integer >= 1, got 0"),
    ("prefix_tuning", {"projection": "yes"}, r"`projection` must be true or false, got 'yes'"),
])
def test_method_specific_errors(method, data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(METHODS.get(method).config_cls, data)


def test_train_config_overrides_are_type_checked():
    assert from_dict(TrainConfig, parse_overrides(["steps=7", "mixed_precision=\"bf16\""])).steps == 7
    with pytest.raises(ConfigError, match=r"`steps` must be an integer, got 'abc'"):
        from_dict(TrainConfig, parse_overrides(["steps=abc"]))
    with pytest.raises(ConfigError, match=r"`batch_size` must be a positive integer, got 0"):
        from_dict(TrainConfig, {"batch_size": 0})
    with pytest.raises(ConfigError, match=r"`mixed_precision` must be one of 'no', 'fp16', 'bf16', got 'fp8'"):
        from_dict(TrainConfig, {"mixed_precision": "fp8"})
