"""Tasks declared as data in a suite file (``[task.NAME]``, ``task_files``): a new task from a
local file trains and reports with no Python written; bad tables and bad data are refused before
any run, each with a message that names the problem and the fix."""

from __future__ import annotations

import json
import re

import pytest

from peft_bench.cli import main
from peft_bench.core.suite import load_suite
from peft_bench.results.store import read_records
from tests.test_suites import write

TRAIN = "[train]\nsteps = 6\nbatch_size = 8\nn_train = 64\nn_test = 32\n"
HEADLINES = """\
models = ["tiny-bert"]
tasks = ["headlines"]
methods = ["lora"]
[task.headlines]
source = "data/headlines.jsonl"
input_fields = ["text"]
columns = {text = "headline"}
label_column = "is_sarcastic"
template = "Headline: {text}\\nSarcastic:"
label_words = ["no", "yes"]
test_size = 40
validation_size = 20
"""


def headlines(folder, n: int = 200, label=lambda i: "yes" if i % 3 == 0 else "no", extra=None):
    """A JSONL file of headlines with string labels in ``folder``/data (its columns are not the
    task's field names)."""
    data = folder / "data"
    data.mkdir(exist_ok=True)
    with open(data / "headlines.jsonl", "w") as f:
        for i in range(n):
            row = {"headline": f"headline number {i} about {'cats' if i % 3 == 0 else 'dogs'}", "is_sarcastic": label(i)}
            f.write(json.dumps({**row, **(extra or {})}) + "\n")
    return data / "headlines.jsonl"


def test_a_declared_task_trains_and_reports_with_no_python(tmp_path, monkeypatch):
    """String labels, a column mapping, a path relative to the suite file (run from elsewhere); the
    report names the data source and the split sizes."""
    suite_dir = tmp_path / "suites"
    suite_dir.mkdir()
    headlines(suite_dir)
    suite = write(suite_dir, HEADLINES + TRAIN)
    monkeypatch.chdir(tmp_path)  # not the suite's folder: the source still resolves from the suite file
    out = tmp_path / "out"
    assert main(["run", suite, "--out", str(out)]) == 0
    [rec] = read_records(out / "s" / "results.jsonl")
    assert rec.status == "ok", rec.error
    assert rec.run.task == "headlines" and rec.run.task_def["source"] == str(suite_dir / "data" / "headlines.jsonl")
    assert rec.run.data["kind"] == "local" and rec.run.n_test == 32
    report = (out / "s" / "README.md").read_text()
    assert "## headlines" in report and "Label words: no, yes." in report
    assert re.search(r"Data: local data `.*headlines\.jsonl`, sha256 [0-9a-f]{12}…, task version 1\. "
                     r"Examples used per run: 64 train / \d+ validation / 32 test\.", report), report


def test_a_declared_task_is_part_of_the_run_id(tmp_path):
    headlines(tmp_path)
    first = load_suite(write(tmp_path, HEADLINES + TRAIN)).runs[0].run_id
    changed = load_suite(write(tmp_path, HEADLINES.replace("Sarcastic:", "Is it sarcastic?") + TRAIN)).runs[0].run_id
    assert first != changed


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.replace('label_column = "is_sarcastic"\n', ""),
     r"the source has no column 'label'; its columns are \['headline', 'is_sarcastic'\]\. Map them with"),
    (lambda s: s.replace('columns = {text = "headline"}', 'columns = {text = "title"}'),
     r"the source has no column 'title' \(for 'text'\); its columns are \['headline', 'is_sarcastic'\]"),
    (lambda s: s.replace('test_size = 40', 'test_size = 500'),
     r"task 'headlines': 200 unique rows, fewer than test_size=500"),
])
def test_bad_declared_data_fails_before_any_run(tmp_path, capsys, edit, message):
    headlines(tmp_path)
    suite = write(tmp_path, edit(HEADLINES) + TRAIN)
    assert main(["run", suite, "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err


@pytest.mark.parametrize("label,message", [
    (lambda i: ["no", "yes", "maybe"][i % 3], r"label values must be one of \['no', 'yes'\] \(`label_names`, in "
                                                r"class order\), got 'maybe' \(66 rows\)"),
    (lambda i: "no", r"class\(es\) \['yes'\] have no rows in the source \(rows per class: \{'no': 200, 'yes': 0\}\)"),
])
def test_bad_labels_are_named_with_their_counts(tmp_path, capsys, label, message):
    headlines(tmp_path, label=label)
    suite = write(tmp_path, HEADLINES + TRAIN)
    assert main(["run", suite, "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_an_unreadable_source_is_named(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "headlines.jsonl").write_text('{"headline": "a", "is_sarcastic": "no"}\n{not json\n')
    suite = write(tmp_path, HEADLINES + TRAIN)
    assert main(["run", suite, "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "task 'headlines': could not read `task_source`" in capsys.readouterr().err


@pytest.mark.parametrize("table,message", [
    ('[task.headlines]\nsource = "x.jsonl"\ninput_field = ["text"]\n',
     r"\[task.headlines\]: unknown field 'input_field'. Did you mean 'input_fields'\? Valid fields: source, "),
    ('[task.headlines]\nsource = "x.jsonl"\n',
     r"\[task.headlines\] declares a new task and lacks `input_fields`, `template`, `label_words`"),
    ('[task.headlines]\nsource = "x.jsonl"\ninput_fields = ["text"]\ntemplate = "{txt}:"\nlabel_words = ["a", "b"]\n',
     r"`template` '\{txt\}:' must use only the input fields \['text'\] as \{field\}"),
    ('[task.headlines]\nsource = "x.jsonl"\ninput_fields = ["text"]\ntemplate = "{text}:"\nlabel_words = ["a", "a"]\n',
     r"`label_words` must be at least two distinct words, got \['a', 'a'\]"),
    ('[task.headlines]\nsource = "x.jsonl"\ninput_fields = ["text"]\ntemplate = "{text}:"\nlabel_words = ["a", "b"]\n'
     'metrics = ["bleu"]\n', r"`metrics` must be chosen from accuracy, exact_match, f1, f1_macro, matthews_correlation, got \['bleu'\]"),
    ('[task.headlines]\ntest_size = "ten"\n', r"`test_size` must be a int \(rows held out for test"),
])
def test_bad_task_tables_are_refused_naming_the_field(tmp_path, capsys, table, message):
    suite = write(tmp_path, 'models = ["tiny-bert"]\ntasks = ["headlines"]\nmethods = ["lora"]\n' + table + TRAIN)
    assert main(["run", suite, "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err
    assert "unknown task 'headlines'" not in err  # the table's problem, not a second misleading one


def test_a_built_in_task_is_overridden_and_a_task_file_is_shared(tmp_path):
    """`[task.dummy]` changes a built-in task's field (a new run id); `task_files` brings the same
    table into two suites."""
    base = load_suite(write(tmp_path, 'models = ["tiny-bert"]\ntasks = ["dummy"]\nmethods = ["lora"]\n' + TRAIN)).runs[0]
    over = load_suite(write(tmp_path, 'models = ["tiny-bert"]\ntasks = ["dummy"]\nmethods = ["lora"]\n'
                            '[task.dummy]\ntest_size = 50\n' + TRAIN)).runs[0]
    assert base.task_def is None and over.task_def == {"base": "dummy", "test_size": 50}
    assert base.run_id != over.run_id
    headlines(tmp_path)
    (tmp_path / "shared.toml").write_text(HEADLINES[HEADLINES.index("[task.headlines]"):])
    a = load_suite(write(tmp_path, 'models = ["tiny-bert"]\ntasks = ["headlines"]\nmethods = ["lora"]\n'
                         'task_files = ["shared.toml"]\n' + TRAIN, name="a")).runs[0]
    assert a.task_def == load_suite(write(tmp_path, HEADLINES + TRAIN, name="b")).runs[0].task_def
