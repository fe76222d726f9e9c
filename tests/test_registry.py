from __future__ import annotations

import sys
import textwrap

import pytest

from peft_bench.core.registry import METHODS, Registry


def test_duplicate_name_raises():
    reg = Registry("thing")
    reg.add("alpha", object())
    with pytest.raises(KeyError, match="'alpha' is already registered"):
        reg.add("alpha", object())


def test_unknown_name_suggests_and_lists_choices():
    reg = Registry("thing")
    reg.add("prompt_tuning", 1)
    reg.add("prefix_tuning", 2)
    with pytest.raises(KeyError, match=r"unknown thing 'promt_tuning'\. Did you mean 'prompt_tuning'.*Valid choices: prefix_tuning, prompt_tuning"):
        reg.get("promt_tuning")


@pytest.mark.parametrize("bad", ["Lora", "1lora", "lo ra", ""])
def test_bad_names_rejected(bad):
    with pytest.raises(ValueError, match="must be lowercase"):
        Registry("thing").add(bad, 1)


def test_builtin_methods_are_the_six_plus_baseline():
    assert {"prompt_tuning", "prefix_tuning", "p_tuning", "lora", "bottleneck_adapter",
            "full_finetune"} <= set(METHODS.names())


@pytest.fixture
def outside_plugin(tmp_path, monkeypatch):
    """A real installed-distribution layout (dist-info with entry_points.txt) on sys.path."""
    (tmp_path / "outside_plugin.py").write_text(textwrap.dedent('''
        from peft_bench.core.registry import register_method
        from peft_bench.methods.lora import LoraMethod

        @register_method("outside_lora")
        class OutsideLora(LoraMethod):
            description = "LoRA shipped by an outside package"
    '''))
    info = tmp_path / "outside_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: outside-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[peft_bench.methods]\noutside_lora = outside_plugin:OutsideLora\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(METHODS, "_entry_points_loaded", False)
    yield
    METHODS._items.pop("outside_lora", None)
    sys.modules.pop("outside_plugin", None)


def test_entry_point_plugin_is_discovered_and_runs(outside_plugin, tmp_path):
    from peft_bench.engine.record import execute
    from conftest import tiny_spec

    assert "outside_lora" in METHODS.names()
    record = execute(tiny_spec("outside_lora", steps=5), tmp_path / "out")
    assert record.status == "ok", record.error
    assert record.run.method == "outside_lora"
    assert record.params.trainable_params > 0
