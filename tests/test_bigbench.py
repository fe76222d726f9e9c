"""BIG-bench's JSON tasks offline (tasks/bigbench.py): the prompt format of BIG-bench's own
``default_format_fn`` on a task.json written here, and (slow: the 358 MB source distribution is
fetched once into the cache) the real archive: the listing, the splits of real tasks, the
evaluation-only refusal and the names it suggests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from peft_bench.cli import main
from peft_bench.core.registry import TASKS, load_builtin_plugins
from peft_bench.core.suite import SuiteError, load_suite
from peft_bench.interface.task import load_splits, split_overlap
from tests.test_suites import write

load_builtin_plugins()
from peft_bench.tasks import bigbench  # noqa: E402  (registered by load_builtin_plugins)


def test_prompts_follow_bigbench_default_format(tmp_path):
    task = {"name": "t", "description": "d", "keywords": [], "task_prefix": "Answer well.\n",
            "example_input_prefix": "\nQuestion: ", "example_output_prefix": "\nAnswer: ",
            "examples": [{"input": "2 + 2?", "target_scores": {"four": 1, "five": 0, "six": 0}},
                         {"input": "Sky?", "target_scores": {"blue": 1, "azure": 1, "red": 0}},
                         {"input": "None right", "target_scores": {"a": 0, "b": 0}}]}
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "task.json").write_text(json.dumps(task))
    rows = bigbench.read_task("t", tmp_path)
    assert len(rows) == 2  # an example with no right choice is left out, as BIG-bench refuses it
    first = rows[0]
    assert first["input"].startswith("Answer well.\n\nQuestion: 2 + 2?\n  choice: ")
    assert first["input"].endswith("\nAnswer: ")
    listed = first["input"].split("\n  choice: ")[1:]
    listed[-1] = listed[-1].removesuffix("\nAnswer: ")
    assert sorted(listed) == ["five", "four", "six"]  # every choice, in an order fixed per example
    assert bigbench.read_task("t", tmp_path)[0]["input"] == first["input"]
    assert first["choices"] == ["four", "five", "six"] and first["label"] == ["four"]
    assert rows[1]["label"] == ["blue", "azure"]  # several right choices: all count
    gen = {**task, "examples": [{"input": "Capital of France?", "target": ["Paris", "paris, france"]},
                                {"input": "1+1", "target": "2"}]}
    (tmp_path / "t" / "task.json").write_text(json.dumps(gen))
    rows = bigbench.read_task("t", tmp_path)
    assert rows[0]["label"] == ["Paris", "paris, france"] and rows[1]["label"] == ["2"] and "choices" not in rows.column_names


@pytest.mark.slow
def test_the_real_archive_lists_and_splits_its_tasks(capsys):
    assert main(["list", "--tasks", "bigbench"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.strip().startswith("bigbench:")]
    assert len(lines) == 1001 and "48 programmatic tasks (task.py) left out" in out
    assert "bigbench:strategyqa" in out and "choice (2 choices)" in out and "generate" in out
    idx = bigbench.index()["tasks"]
    assert sum(e["n"] >= bigbench.MIN_TRAIN for e in idx.values()) >= 50
    for name, kind in (("strategyqa", "choice"), ("linguistic_mappings/past_tense_json", "generate")):
        spec = TASKS.get(f"bigbench:{name}")
        assert spec.objective == kind and not spec.eval_only
        splits = load_splits(spec)
        assert split_overlap(spec, splits) == {"test&train": 0, "test&validation": 0, "train&validation": 0}
        assert len(splits["test"]) == min(1000, idx[name]["n"] // 3)
        assert sum(map(len, splits.values())) <= idx[name]["n"]


@pytest.mark.slow
def test_evaluation_only_tasks_and_unknown_names_are_refused_before_running(tmp_path):
    assert TASKS.get("bigbench:anachronisms").eval_only  # 230 examples
    suite = write(tmp_path, 'models = ["tiny-llama"]\ntasks = ["bigbench:anachronisms"]\nmethods = ["zero_shot", "lora"]\n')
    with pytest.raises(SuiteError, match=r"task 'bigbench:anachronisms' is evaluation-only .*methods that train \(lora\) "
                                         r"cannot run it, zero_shot can"):
        load_suite(suite)
    load_suite(write(tmp_path, 'models = ["tiny-llama"]\ntasks = ["bigbench:anachronisms"]\nmethods = ["zero_shot"]\n'))
    with pytest.raises(SuiteError, match=r"unknown BIG-bench task 'strategyq'\. Did you mean 'strategyqa'"):
        load_suite(write(tmp_path, 'models = ["tiny-llama"]\ntasks = ["bigbench:strategyq"]\nmethods = ["zero_shot"]\n'))
    with pytest.raises(SuiteError, match=r"which needs a causal LM"):
        load_suite(write(tmp_path, 'models = ["tiny-bert"]\ntasks = ["bigbench:strategyqa"]\nmethods = ["zero_shot"]\n'))


def _fixture_archive(cache, tasks: dict[str, dict]) -> None:
    """A cache holding the artifact unpacked, as ``fetch`` leaves it (manifest, stamps, completion
    mark), with fixture task.json files in BIG-bench's format instead of the real archive's."""
    from peft_bench.assets import artifacts

    out_root = cache / "artifacts" / f"{bigbench.ARTIFACT.package}-{bigbench.ARTIFACT.version}"
    for name, task in tasks.items():
        folder = out_root / bigbench.ARTIFACT.member / name
        folder.mkdir(parents=True)
        (folder / "task.json").write_text(json.dumps(task))
    artifacts._write_manifest(out_root)
    artifacts._write_stamps(out_root)
    (out_root / ".complete").touch()


def test_a_bigbench_choice_task_runs_end_to_end_from_fixture_files(tmp_path, monkeypatch):
    """A task.json in BIG-bench's format, in an artifact cache laid out as ``fetch`` leaves it:
    named bigbench:NAME in a suite, split, trained and scored in child processes; the record pins
    the archive's sha256."""
    import random

    r = random.Random(0)
    examples = []
    for i in range(400):
        a, b = r.randrange(100), r.randrange(100)
        examples.append({"input": f"Is {a} larger than {b}? ({i})", "target_scores": {"Yes": int(a > b), "No": int(a <= b)}})
    sub = {"name": "bigger/easy", "description": "which number is larger", "keywords": [],
           "examples": [{"input": f"Say go {i}", "target": "go"} for i in range(120)]}
    _fixture_archive(tmp_path / "cache", {"bigger": {"name": "bigger", "description": "compare numbers",
                                                      "keywords": [], "examples": examples},
                                          "bigger/easy": sub})
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path / "cache"))
    bigbench.index.cache_clear()
    bigbench.task.cache_clear()
    try:
        assert set(bigbench.index()["tasks"]) == {"bigger", "bigger/easy"}
        assert TASKS.get("bigbench:bigger/easy").eval_only and TASKS.get("bigbench:bigger/easy").objective == "generate"
        suite = write(tmp_path, 'models = ["tiny-llama"]\ntasks = ["bigbench:bigger"]\nmethods = ["zero_shot", "lora"]\n'
                                '[train]\nsteps = 4\nbatch_size = 8\nn_train = 32\nn_test = 40\n')
        # a fresh process: its run processes see this cache (a run server started earlier here has its own)
        proc = subprocess.run([sys.executable, "-m", "peft_bench.cli", "run", suite, "--out", str(tmp_path / "out")],
                              capture_output=True, text=True, env=dict(os.environ, PEFT_BENCH_CACHE=str(tmp_path / "cache")))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    finally:
        bigbench.index.cache_clear()
        bigbench.task.cache_clear()
    from peft_bench.results.store import read_records

    recs = read_records(tmp_path / "out" / "s" / "results.jsonl")
    assert [r.status for r in recs] == ["ok", "ok"] and all(r.run.n_test == 40 for r in recs)
    assert recs[0].run.data == {"kind": "artifact", "sha256": bigbench.ARTIFACT.sha256, "task_version": 1}
    assert "Each example's own choices" in (tmp_path / "out" / "s" / "README.md").read_text()
