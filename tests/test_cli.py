from __future__ import annotations

import textwrap

import pytest

from peft_bench.cli import main

SIX = ["prompt_tuning", "prefix_tuning", "p_tuning", "lora", "bottleneck_adapter", "full_finetune"]


def test_list_shows_six_methods_tasks_models(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in SIX + ["sentiment", "sms_spam", "boolq", "minilm", "smollm2-135m", "quick"]:
        assert f"  {name}" in out


def _suite(tmp_path, body: str):
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(body))
    return str(path)


BASE = 'models = ["tiny-bert"]\ntasks = ["dummy"]\nseeds = [0]\n'


@pytest.mark.parametrize("body,message", [
    (BASE + 'methods = ["lorra"]\n', r"`methods`: unknown method 'lorra'\. Did you mean 'lora'\?.*Valid choices: .*bottleneck_adapter"),
    ('models = ["tiny-bert"]\ntasks = ["sentimnt"]\nmethods = ["lora"]\n', r"unknown task 'sentimnt'\. Did you mean 'sentiment'"),
    ('models = ["minilmm"]\ntasks = ["dummy"]\nmethods = ["lora"]\n', r"unknown model 'minilmm'\. Did you mean 'minilm'"),
    (BASE + 'methods = ["lora"]\n[train]\nsteps = "many"\n', r"\[train\]: `steps` must be an integer, got 'many'"),
    (BASE + 'methods = ["lora"]\n[method.lora]\nr = -2\n', r"\[method.lora\]: `r` must be a positive integer, got -2"),
    (BASE + 'methods = []\n', r"`methods` must be a non-empty list, got \[\]"),
    (BASE + 'methods = ["lora"]\nepochs = 3\n', r"unknown key 'epochs'"),
    (BASE + 'methods = ["lora"]\n[method.prompt_tuning]\nnum_virtual_tokens = 5\n', r"\[method.prompt_tuning\] configures a method that is not in `methods`"),
    (BASE + 'methods = ["lora"]\n[grid.lora]\nr = []\n', r"\[grid.lora\]: `r` must be a non-empty list of values, got \[\]"),
    (BASE + 'methods = ["lora"]\n[method.lora]\nr = 4\n[grid.lora]\nr = [2, 8]\n', r"`r` is also set in \[method.lora\]; set it in one place only"),
    (BASE + 'methods = ["lora"]\n[grid.lora]\nr = [2, "big"]\n', r"\[grid.lora\]: `r` must be an integer, got 'big'"),
    (BASE + 'methods = ["lora"]\ntimeout_s = -5\n', r"`timeout_s` must be a positive finite number, got -5"),
    (BASE + 'methods = ["lora"]\ntrust_remote_code = ["minilm"]\n', r"`trust_remote_code` names model 'minilm', which is not in `models`"),
    ('models = ["tiny-bert"]\ntasks = ["dummy"]\nseeds = [-1]\nmethods = ["lora"]\n', r"`seeds` must be a non-empty list of integers in \[0, 2\*\*32\) \(numpy's seed range\), got \[-1\]"),
    (BASE + 'methods = ["lora"]\n[train]\nseed = 3\n', r"`train.seed` conflicts with `seeds`"),
    ('models = ["tiny-bert"\n', r"not valid TOML"),
])
def test_bad_suite_fails_before_running(tmp_path, capsys, body, message):
    import re

    assert main(["run", _suite(tmp_path, body), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err, re.S), err
    assert not (tmp_path / "out").exists()


def test_bad_override_is_named(tmp_path, capsys):
    path = _suite(tmp_path, BASE + 'methods = ["lora"]\n')
    assert main(["run", path, "--set", "stepz=3", "--out", str(tmp_path)]) == 2
    assert "unknown key 'stepz' for TrainConfig. Did you mean 'steps'?" in capsys.readouterr().err


def test_unknown_builtin_suite(capsys):
    assert main(["run", "quik"]) == 2
    assert "no suite file or built-in suite named 'quik'. Did you mean 'quick'?" in capsys.readouterr().err


@pytest.mark.slow
def test_run_resume_and_report(tmp_path, capsys):
    from peft_bench.results.store import read_records

    path = _suite(tmp_path, BASE + 'methods = ["lora", "prompt_tuning"]\n[train]\nsteps = 5\nn_train = 64\nn_test = 32\n')
    out = tmp_path / "out"
    assert main(["run", path, "--out", str(out)]) == 0
    records = read_records(out / "s" / "results.jsonl")
    assert sorted(r.run.method for r in records) == ["lora", "prompt_tuning"]
    assert all(r.status == "ok" for r in records)
    capsys.readouterr()
    assert main(["run", path, "--out", str(out)]) == 0  # everything done: nothing re-runs
    assert "2 runs, 2 skipped" in capsys.readouterr().out
    assert len((out / "s" / "results.jsonl").read_text().splitlines()) == 2
    assert main(["report", str(out / "s"), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "README.md").read_text()
    assert "| lora " in text and "| prompt_tuning " in text and "majority class (baseline)" in text
    assert (tmp_path / "rep" / "results.jsonl").exists()


def test_version_names_the_installed_package(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"peftbench {version('peft-bench')}"


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(tmp_path, capsys, monkeypatch):
    """An unknown name is the user's: one line, exit 2. A KeyError from a bug is not turned into a
    one-line 'error' that hides where it came from."""
    import peft_bench.cli as cli

    suite = _suite(tmp_path, BASE + 'methods = ["lorra"]\n')
    assert main(["run", suite, "--dry-run", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'lorra'. Did you mean 'lora'?" in err and "Traceback" not in err

    def buggy(args):
        return {}["missing-key"]

    monkeypatch.setattr(cli, "cmd_list", buggy)
    with pytest.raises(KeyError, match="missing-key"):
        main(["list"])
