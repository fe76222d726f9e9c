"""Suites that survive: real child processes, injected faults, kill -9, torn writes, resume."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from peft_bench import load_records, run_suite, summarize
from peft_bench.cli import main
from peft_bench.results.store import read_records
from peft_bench.core.suite import load_suite

TINY = 'models = ["tiny-bert"]\ntasks = ["dummy"]\n'
TRAIN = "[train]\nsteps = 6\nbatch_size = 8\nn_train = 64\nn_test = 32\n"


def write(tmp_path, body: str, name="s") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.mark.slow
def test_failures_are_results_and_the_suite_goes_on(tmp_path, capsys):
    suite = write(tmp_path, TINY + 'methods = ["dummy"]\nseeds = [0]\ntimeout_s = 6\n' + TRAIN
                  + '[[grid.dummy]]\nfault = ["none", "raise", "nan", "kill", "hang", "oom"]\n')
    out = tmp_path / "out"
    assert main(["run", suite, "--out", str(out)]) == 1  # something failed: non-zero exit
    text = capsys.readouterr()
    status = {r.run.method_config["fault"]: r for r in read_records(out / "s" / "results.jsonl")}
    assert {k: v.status for k, v in status.items()} == {
        "none": "ok", "raise": "failed", "nan": "diverged", "kill": "killed", "hang": "timeout", "oom": "oom"}
    assert "injected failure after step 2" in status["raise"].error
    assert "loss became nan at step 3" in status["nan"].error
    assert "exceeded its timeout of 6" in status["hang"].error
    assert "summary: 1 diverged, 1 failed, 1 killed, 1 ok, 1 oom, 1 timeout" in text.out
    # resume: nothing left to do; --rerun-failed re-runs exactly the five that failed
    assert main(["run", suite, "--out", str(out), "--dry-run"]) == 0
    assert "6 skipped" in capsys.readouterr().out
    assert main(["run", suite, "--out", str(out), "--rerun-failed", "--dry-run"]) == 0
    assert "1 skipped (already recorded in" in capsys.readouterr().out


def test_kill_9_during_result_writing(tmp_path):
    """The writer dies half-way through a record: earlier records stay intact, the torn line is
    not a record, and the next append is whole."""
    from tests.test_report import rec
    from peft_bench.results.store import append_record

    path = tmp_path / "results.jsonl"
    append_record(path, rec("lora", 0, 0.8, 10))
    code = textwrap.dedent(f'''
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from tests.test_report import rec
        import peft_bench.results.store as results
        real = os.write
        def torn(fd, data):
            real(fd, data[: len(data) // 2])
            os.fsync(fd)
            os.kill(os.getpid(), signal.SIGKILL)
        results.os.write = torn
        results.append_record({str(path)!r}, rec("prompt_tuning", 0, 0.7, 10))
    ''')
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -signal.SIGKILL
    assert [r.run_id for r in read_records(path)] == ["m-t-lora-0"]
    append_record(path, rec("p_tuning", 0, 0.75, 10))
    assert [r.run_id for r in read_records(path)] == ["m-t-lora-0", "m-t-p_tuning-0"]


def test_grids_expand_union_and_ids_are_stable(tmp_path):
    body = TINY + 'methods = ["prompt_tuning", "lora"]\nseeds = [0, 1]\n' + TRAIN + textwrap.dedent('''
        [[grid.prompt_tuning]]
        num_virtual_tokens = [1, 20]
        [[grid.prompt_tuning]]
        init = ["class_label", "random"]
        [grid.lora]
        r = [2, 4]
        lr = [1e-3, 3e-3]
    ''')
    a = load_suite(write(tmp_path, body))
    # prompt tuning: (1, class_label), (20, class_label), (20, random) -- (20, class_label) once
    pt = {(s.method_config.get("num_virtual_tokens", 20), s.method_config.get("init", "class_label"))
          for s in a.runs if s.method == "prompt_tuning"}
    assert pt == {(1, "class_label"), (20, "class_label"), (20, "random")}
    assert sum(s.method == "prompt_tuning" for s in a.runs) == 3 * 2
    assert sum(s.method == "lora" for s in a.runs) == 4 * 2
    assert len({s.run_id for s in a.runs}) == len(a.runs) == 14
    b = load_suite(write(tmp_path, body, name="s2"))
    assert [s.run_id for s in a.runs] == [s.run_id for s in b.runs]


@pytest.mark.slow
def test_two_seeds_give_mean_and_std_and_reruns_reproduce(tmp_path, capsys):
    suite = write(tmp_path, TINY + 'methods = ["lora"]\nseeds = [0, 1]\n' + TRAIN)
    out = tmp_path / "out"
    records = run_suite(suite, out=out)  # the Python API: every record of the store
    assert records == load_records(out / "s") and len(records) == 2
    first = {r.run_id: r.metrics["accuracy"].value for r in records}
    report = (out / "s" / "README.md").read_text()
    header = [line for line in report.splitlines() if line.startswith("| method ")][0]
    row = [line for line in report.splitlines() if line.startswith("| lora ")][0]
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")]))
    import statistics

    mean, low, high = map(float, re.match(r"\**([\d.]+) \[([\d.]+), ([\d.]+)\]", cells["accuracy ↑ [95% CI]"]).groups())
    assert len(set(first.values())) == 2  # the two seeds differ
    assert abs(mean - statistics.fmean(first.values())) < 1e-3 and cells["n"] == "2"
    # the interval covers test-set sampling and the two seeds: wider than the seeds' own spread
    assert low < min(first.values()) <= max(first.values()) < high
    again = {r.run_id: r.metrics["accuracy"].value for r in run_suite(suite, out=out, mode="force")}
    assert again == first  # same suite file, same ids, same numbers


def test_artifacts_with_pickles_are_refused(tmp_path):
    from peft_bench.interface.method import assert_safetensors_only

    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match=r"refusing to load artifact .* pickle file\(s\) \['pytorch_model.bin'\]"):
        assert_safetensors_only(tmp_path)


def test_trust_remote_code_only_for_models_the_suite_names(tmp_path):
    base = 'models = ["tiny-bert", "tiny-llama"]\ntasks = ["dummy"]\nmethods = ["lora"]\n'
    plain = load_suite(write(tmp_path, base, name="a"))
    assert not any(s.trust_remote_code for s in plain.runs)
    named = load_suite(write(tmp_path, base + 'trust_remote_code = ["tiny-llama"]\n', name="b"))
    assert {s.model: s.trust_remote_code for s in named.runs} == {"tiny-bert": False, "tiny-llama": True}


@pytest.mark.slow
def test_suite_with_switch_measures_serving_and_reports_it(tmp_path, capsys):
    import json

    suite = write(tmp_path, 'models = ["tiny-bert"]\ntasks = ["dummy", "sentiment"]\nseeds = [0]\n'
                  'methods = ["prompt_tuning", "lora", "full_finetune"]\nswitch = true\n' + TRAIN)
    out = tmp_path / "out"
    assert main(["run", suite, "--out", str(out)]) == 0
    lines = [json.loads(x) for x in (out / "s" / "switch.jsonl").read_text().splitlines()]
    assert sorted(x["method"] for x in lines) == ["full_finetune", "lora", "prompt_tuning"]
    assert all(x["status"] == "ok" and x["warm_switch"]["n"] == 20 * 2 for x in lines)
    report = (out / "s" / "README.md").read_text()
    assert "## Task switching" in report and "## Serving throughput" in report
    ft = [line for line in report.splitlines() if line.startswith("| full_finetune") and "ex/s" not in line][-1]
    assert "n/a" in ft  # full fine-tuning cannot mix tasks in one forward
    # measuring again on the saved artifacts, without retraining
    assert main(["switch", str(out / "s"), "--force", "--repeats", "20"]) == 0
    assert len((out / "s" / "switch.jsonl").read_text().splitlines()) == 6


def test_editing_a_local_task_file_gives_new_runs(tmp_path, capsys):
    """The run id covers the data's content: edited data is never mistaken for finished runs."""
    import csv

    data = tmp_path / "data"  # a folder of split files: train.csv, test.csv
    data.mkdir()

    def write_rows(n_train):
        for split, n, offset in (("train", n_train, 0), ("test", 100, 10_000)):
            with open(data / f"{split}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["text", "label"])
                for i in range(offset, offset + n):
                    w.writerow([f"sample {'good' if i % 2 else 'bad'} text number {i}", i % 2])

    write_rows(300)
    suite = write(tmp_path, TINY.replace('"dummy"', '"sentiment"') + 'methods = ["lora"]\n' + TRAIN
                  + f'[task_source]\nsentiment = "{data}"\n')
    first = load_suite(suite).runs[0].run_id
    out = tmp_path / "out"
    assert main(["run", suite, "--out", str(out)]) == 0
    assert main(["run", suite, "--out", str(out), "--dry-run"]) == 0
    assert "1 skipped" in capsys.readouterr().out  # unchanged data: the run is done
    write_rows(301)  # one more training row
    assert load_suite(suite).runs[0].run_id != first
    assert main(["run", suite, "--out", str(out)]) == 0
    records = read_records(out / "s" / "results.jsonl")
    assert len(records) == 2 and len({r.run.data["sha256"] for r in records}) == 2


def test_runs_with_different_training_settings_are_separate_rows(tmp_path):
    """steps=2 and steps=3 of the same suite are two variants (two rows), not two seeds of one."""
    suite = write(tmp_path, TINY + 'methods = ["lora"]\n' + TRAIN)
    out = tmp_path / "out"
    run_suite(suite, out=out, overrides={"steps": 2}, switch=False)
    records = run_suite(suite, out=out, overrides=["steps=3"], switch=False)
    table = summarize(records)  # the table the report is made from
    assert sorted(table["label"]) == ["lora (steps=2)", "lora (steps=3)"] and list(table["n"]) == [1, 1]
    report = (out / "s" / "README.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| lora")]
    # (2 and 3 steps of a tiny model: flagged "did not train", which the label says)
    assert [r.split("|")[1].strip().split(" — ")[0] for r in rows] == ["lora (steps=2)", "lora (steps=3)"], rows
    assert "; n: 1;" in next(line for line in report.splitlines() if line.startswith("Same in every row:"))
