"""The Ray executor on a real local Ray cluster (2 CPUs), with its workers killed mid-run.

`peftbench run --executor ray` runs in a subprocess and starts its own local Ray instance. This
test watches the process table for the Ray workers of chosen runs (their title is
``ray::peftbench:<run id>`` while they run one) and SIGKILLs them once the run is under way:
- run A's worker (a run that pauses 4 s after its second step) is killed once: Ray retries the run, which then ends ok;
- run B's worker (another such run) is killed on both attempts: the run is recorded as killed after its one retry;
- run C is left alone.
Every run ends up in the store exactly once, and a killed worker leaves no run process behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from peft_bench.cli import main
from peft_bench.results.store import read_records
from peft_bench.core.suite import load_suite

pytestmark = pytest.mark.slow  # end to end: real processes, launches or models

ray = pytest.importorskip("ray", reason="the Ray executor is an optional extra: pip install 'peft-bench[ray]'")

SUITE = """
name = "r"
models = ["tiny-bert"]
tasks = ["dummy"]
methods = ["dummy", "prompt_tuning"]
seeds = [0]
[train]
steps = 10
batch_size = 16
n_train = 400
n_test = 64
eval_batch_size = 32
max_length = 64
n_validation = 32
eval_points = 1
[method.dummy]   # LoRA that pauses after its second step: a worker killed 1 s in is mid-run
fault = "pause"
pause_s = 4
[grid.dummy]
r = [4, 8]
"""


def _running_worker(run_id: str):
    """The Ray worker executing ``run_id`` once its run's own process (forked from the worker's
    server) exists, else None."""
    for p in psutil.process_iter(["cmdline"]):
        try:
            if " ".join(p.info["cmdline"] or []).strip() == f"ray::peftbench:{run_id}":
                servers = [c for c in p.children() if "forkserver" in " ".join(c.cmdline())]
                runs = [r for s in servers for r in s.children()]  # forked from the server
                if runs:
                    return p, runs
        except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
            continue
    return None


def _killer(run_id: str, times: int, log: list, stop: threading.Event) -> None:
    """SIGKILL the worker of ``run_id`` ``times`` times, each time 1 s into its run."""
    killed_pids: set[int] = set()
    while len(killed_pids) < times and not stop.is_set():
        found = _running_worker(run_id)
        if found and found[0].pid not in killed_pids:
            worker, runs = found
            time.sleep(1.0)
            try:
                worker.kill()
            except psutil.NoSuchProcess:
                continue  # the run finished first: wait for another attempt (there is none)
            killed_pids.add(worker.pid)
            log.append((run_id, worker.pid, [r.pid for r in runs]))
        time.sleep(0.1)


def test_ray_suite_survives_killed_workers(tmp_path, capsys):
    suite = tmp_path / "r.toml"
    suite.write_text(SUITE)
    runs = load_suite(str(suite)).runs
    (a, b), (c,) = ([s.run_id for s in runs if (s.method == "dummy") == paused] for paused in (True, False))
    log: list = []
    stop = threading.Event()
    killers = [threading.Thread(target=_killer, args=(a, 1, log, stop), daemon=True),
               threading.Thread(target=_killer, args=(b, 2, log, stop), daemon=True)]
    for k in killers:
        k.start()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "peft_bench.cli", "run", str(suite), "--out", str(tmp_path / "out"),
                           "--executor", "ray", "--no-switch"], env=env, capture_output=True, text=True,
                          timeout=500, cwd=Path(__file__).resolve().parent.parent)
    stop.set()
    out = proc.stdout + proc.stderr[-3000:]
    assert proc.returncode == 1, out  # one run failed (B)
    assert [x[0] for x in log].count(a) == 1 and [x[0] for x in log].count(b) == 2, (log, out)
    path = tmp_path / "out" / "r" / "results.jsonl"
    lines = path.read_text().splitlines()
    records = {r.run_id: r for r in read_records(path)}
    assert len(lines) == 3 and set(records) == {a, b, c}  # nothing lost, nothing duplicated
    assert records[a].status == "ok" and records[a].resources.executor == "ray"
    assert records[c].status == "ok"
    assert records[b].status == "killed" and "died 2 times" in records[b].error
    # the run processes of the killed workers died with them (no orphan training on)
    time.sleep(1)
    for _, _, run_pids in log:
        for pid in run_pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    # resume: the killed run is retried with --rerun-failed, the others are not run again (here by the
    # local executor: what is under test is the store Ray left, and a second Ray start costs ~15 s)
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--no-switch", "--rerun-failed"]) == 0
    assert "1 to run" in capsys.readouterr().out
    records = {r.run_id: r for r in read_records(path)}
    assert {r.status for r in records.values()} == {"ok"} and len(records) == 3
    assert len(path.read_text().splitlines()) == 4  # the killed record stays in the file; the retry supersedes it
