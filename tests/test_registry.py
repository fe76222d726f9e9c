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


def _dist(root, name: str, module_code: str | None, entry_points: str):
    """A real installed-distribution layout on ``root``: <name>-0.1.dist-info with METADATA and
    entry_points.txt, and the plugin module (None: the entry point names a module that is missing)."""
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    if module_code is not None:
        (root / f"{name.replace('-', '_')}.py").write_text(textwrap.dedent(module_code))


# an outside method, written as a plugin author would: the public interface of peft_bench only
OUTSIDE_LORA = '''
    from dataclasses import dataclass

    from peft import LoraConfig

    from peft_bench import MethodConfig, PeftMethod, opt, register_method, task_type


    @dataclass
    class OutsideConfig(MethodConfig):
        lr: float = opt(1e-3, "peak learning rate")
        r: int = opt(2, "rank")


    @register_method("outside_lora")
    class OutsideLora(PeftMethod):
        config_cls = OutsideConfig
        description = "LoRA shipped by an outside package"

        def peft_config(self, model, ctx):
            return LoraConfig(task_type=task_type(ctx), r=self.config.r, lora_alpha=2 * self.config.r)
'''


@pytest.fixture
def outside_plugin(tmp_path, monkeypatch):
    """A real installed-distribution layout (dist-info with entry_points.txt) on sys.path."""
    _dist(tmp_path, "outside-plugin", OUTSIDE_LORA, "[peft_bench.methods]\noutside_lora = outside_plugin:OutsideLora\n")
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


def test_plugin_source_uses_the_public_interface_only():
    """The built-in methods and tasks are written as outside plugins are: no private module."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for f in [*(root / "methods").glob("*.py"), *(root / "tasks").glob("*.py")]:
        for line in f.read_text().splitlines():
            if line.startswith(("from peft_bench", "import peft_bench")):
                assert line.startswith(("from peft_bench import", "from peft_bench.methods.")), (f.name, line)


def _cli(args, root, cwd):
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return subprocess.run([sys.executable, "-m", "peft_bench.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.slow
def test_a_broken_plugin_fails_alone(tmp_path):
    """An installed plugin whose entry point names a missing module: `peftbench list` and a suite
    of other methods work, with one warning line naming the distribution, the entry point and the
    error; `list` shows it as broken; a suite that names it is refused before anything runs."""
    plugins = tmp_path / "site"
    plugins.mkdir()
    _dist(plugins, "broken-plugin", None, "[peft_bench.methods]\nbroken_method = no_such_module_xyz:Method\n")
    _dist(plugins, "outside-plugin", OUTSIDE_LORA, "[peft_bench.methods]\noutside_lora = outside_plugin:OutsideLora\n")
    proc = _cli(["list"], plugins, tmp_path)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "broken_method" in line]
    assert len(warnings) == 1, proc.stderr
    assert ("broken-plugin 0.1" in warnings[0] and "broken_method = no_such_module_xyz:Method" in warnings[0]
            and "ModuleNotFoundError" in warnings[0] and "no_such_module_xyz" in warnings[0]), warnings[0]
    assert "Traceback" not in proc.stderr
    assert "outside_lora" in proc.stdout and "prompt_tuning" in proc.stdout
    assert any(line.split()[:2] == ["broken_method", "BROKEN:"] for line in proc.stdout.splitlines()), proc.stdout

    train = "[train]\nsteps = 2\nbatch_size = 4\nn_train = 32\nn_test = 16\n"
    good = tmp_path / "good.toml"
    good.write_text('models = ["tiny-bert"]\ntasks = ["dummy"]\nmethods = ["lora", "outside_lora"]\n' + train)
    proc = _cli(["run", str(good), "--out", str(tmp_path / "out"), "--no-switch"], plugins, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "summary: 2 ok" in proc.stdout
    assert sum("broken_method" in line for line in proc.stderr.splitlines()) <= 1, proc.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text('models = ["tiny-bert"]\ntasks = ["dummy"]\nmethods = ["lora", "broken_method"]\n' + train)
    proc = _cli(["run", str(bad), "--out", str(tmp_path / "out2"), "--no-switch"], plugins, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "broken_method" in proc.stderr and "cannot be loaded" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out2").exists()  # refused before anything ran
