"""The outside plugin of the README (examples/bitfit: a pyproject and one module) keeps the method
contract through ``peft_bench.testing``, and its entry point names the method it registers."""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path

import pytest

from peft_bench.core.registry import METHODS
from peft_bench.testing import check_method

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "bitfit"


@pytest.fixture(scope="module")
def bitfit():
    sys.path.insert(0, str(EXAMPLE))
    try:
        project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
        (name, target), = project["project"]["entry-points"]["peft_bench.methods"].items()
        module, attr = target.split(":")
        cls = getattr(importlib.import_module(module), attr)
        assert METHODS.get(name) is cls
        yield name
    finally:
        sys.path.remove(str(EXAMPLE))


@pytest.mark.slow
def test_the_example_plugin_keeps_the_contract(bitfit, tmp_path):
    t = check_method(bitfit, "tiny-bert", tmp_path, method_config={"lr": 1e-2}, pattern=r"\.bias$|classifier")
    assert "cannot serve a mixed-task batch" in t.serving


def test_the_example_plugin_is_refused_where_it_has_nothing_to_train(bitfit):
    assert "Llama-style decoders have no bias terms" in METHODS.get(bitfit).refusal("causal")
