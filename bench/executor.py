"""The local executor: one child process per run, failures recorded as results, resume.

Each run executes in a child forked from a forkserver that imported torch, transformers, peft &
co once (``bench.preload``) and never ran a torch op: the child pays no interpreter or import
start-up, its peak memory is its own, and a crash, OOM, hang or ``kill -9`` ends only that run.
The parent appends each finished record to the result store at once (``append_record``).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from bench import server
from bench.results import ResultRecord, append_record, read_records
from bench.runner import RunSpec, _run_section, execute

Mode = Literal["resume", "rerun_failed", "force"]


def die_with_parent() -> bool:
    """Linux: this process is killed when its parent dies (a run with the server that forked it,
    the server with the suite process: see bench/_server_exit.py), so killing a suite never leaves
    a server or a run behind. False where unsupported."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        return True
    except (OSError, AttributeError):
        return False


def _limit_memory(gb: float | None) -> None:
    """Cap the run's address space: allocations past it fail and the run is recorded as 'oom'."""
    if gb:
        import resource

        limit = int(gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _child(fn, args: tuple, memory_limit_gb: float | None, conn, env: dict[str, str] | None = None) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the suite's: it kills this run itself
    die_with_parent()
    _limit_memory(memory_limit_gb)
    os.environ.update(env or {})  # before any CUDA or thread-pool initialisation in this process
    conn.send(fn(*args))
    conn.close()


def call_isolated(fn, args: tuple, timeout_s: float | None = None, memory_limit_gb: float | None = None,
                  env: dict[str, str] | None = None) -> tuple[Any, bool, int | None, float]:
    """``fn(*args)`` in a child forked from the pre-imported server: (result or None if the child
    died, timed out?, exit code, wall seconds). ``env`` is set in the child (the server's own
    environment is the one it started with: e.g. the GPU a Ray task was given since)."""
    ctx = server.context()
    parent, child = ctx.Pipe(duplex=False)
    t0 = time.perf_counter()
    proc = ctx.Process(target=_child, args=(fn, args, memory_limit_gb, child, env), daemon=True)
    proc.start()
    child.close()
    result, timed_out = None, False
    try:
        if parent.poll(timeout_s):
            try:
                result = parent.recv()
            except EOFError:  # the child died before sending (killed, segfault)
                result = None
        else:
            timed_out = True
        proc.join(5 if result is not None else 0.5)
    finally:  # also on Ctrl-C in the suite: the run never outlives this call
        if proc.is_alive():
            proc.kill()
            proc.join()
    return result, timed_out, proc.exitcode, time.perf_counter() - t0


def run_isolated(spec: RunSpec, out_dir: Path, timeout_s: float | None = None,
                 memory_limit_gb: float | None = None, env: dict[str, str] | None = None) -> ResultRecord:
    """Run one spec in its own child process; whatever happens, return a record."""
    record, timed_out, exitcode, wall = call_isolated(execute, (spec, out_dir), timeout_s, memory_limit_gb, env)
    if record is None:
        if timed_out:
            status, error = "timeout", f"run exceeded its timeout of {timeout_s} s and was killed."
        else:
            status, error = "killed", f"the run's process ended without a result (exit code {exitcode})."
        record = ResultRecord(run=_run_section(spec), status=status, error=error)
    inner = record.resources.get("run_wall_s")
    record.resources["isolated_wall_s"] = wall
    # what isolation costs: the child's wall time outside the run itself (fork, hand-back)
    record.resources["isolation_overhead_s"] = wall - inner if inner is not None else None
    return record


def select(specs: list[RunSpec], results: Path, mode: Mode) -> tuple[list[RunSpec], dict[str, str]]:
    """(runs to do, status of each run already recorded). Resume skips every recorded run;
    ``rerun_failed`` re-runs those not ok; ``force`` re-runs all."""
    recorded = {r.run_id: r.status for r in read_records(results)} if results.exists() else {}
    if mode == "force":
        return list(specs), recorded
    skip = {k for k, s in recorded.items() if s == "ok" or mode == "resume"}
    return [s for s in specs if s.run_id not in skip], recorded


@dataclass
class SuiteOutcome:
    records: list[ResultRecord] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: bool = False  # Ctrl-C ended the suite early

    @property
    def failed(self) -> list[ResultRecord]:
        return [r for r in self.records if r.status != "ok"]

    @property
    def isolation_overhead_s(self) -> float | None:
        xs = [r.resources.get("isolation_overhead_s") for r in self.records]
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None


def label(spec: RunSpec) -> str:
    text = f"{spec.model} {spec.task} {spec.method}"
    if spec.method_config:
        text += " " + " ".join(f"{k}={v}" for k, v in spec.method_config.items())
    return f"{text} seed {spec.train.seed}"


def outcome_line(rec: ResultRecord) -> str:
    acc = rec.metrics.get("accuracy", {}).get("value")
    return (f"-> {rec.status}" + (f", accuracy {acc:.3f}" if acc is not None else "")
            + (f"\n    {rec.error.strip().splitlines()[-1]}" if rec.error else ""))


def run_local(specs: list[RunSpec], out_dir: Path, *, isolate: bool = True, timeout_s: float | None = None,
              memory_limit_gb: float | None = None, write: bool = True,
              log: Callable[[str], None] = print) -> SuiteOutcome:
    """Run ``specs`` one after the other, appending each record to ``out_dir/results.jsonl``
    (``write=False``: the other processes of a launch, whose main process writes)."""
    results = Path(out_dir) / "results.jsonl"
    if isolate:
        server.preload_models(s.model for s in specs)  # if the server is not running yet
    outcome = SuiteOutcome()
    t0 = time.perf_counter()
    try:
        for i, spec in enumerate(specs, 1):
            log(f"[{i}/{len(specs)}] {label(spec)}")
            rec = (run_isolated(spec, out_dir, timeout_s, memory_limit_gb) if isolate else execute(spec, out_dir))
            if write:
                append_record(results, rec)
            outcome.records.append(rec)
            log(f"    {outcome_line(rec)}")
    except KeyboardInterrupt:  # Ctrl-C: the running run was killed; every finished record is written
        outcome.interrupted = True
        log("    -> interrupted (Ctrl-C): the running run was stopped and not recorded; run again to resume")
    outcome.wall_s = time.perf_counter() - t0
    return outcome


def shard(specs: list[RunSpec], i: int, n: int) -> list[RunSpec]:
    """Shard ``i`` of ``n`` (1-based): every n-th run of the suite's order, starting at the i-th, so
    that each shard gets a mix of methods and the shards together are the suite, each run once."""
    return specs[i - 1::n]


def merge_stores(sources: list[Path], out_dir: Path) -> tuple[list[ResultRecord], int]:
    """Join result stores (``results.jsonl`` files or folders holding one) and what ``out_dir``
    already holds into ``out_dir/results.jsonl``, each run once: an ok record wins over a failed
    one, then the later finished. Written to a temporary file and renamed into place, so a crash
    leaves the old store whole. ``switch.jsonl`` lines are joined the same way (each line once).
    Returns (the merged records, how many duplicate records were dropped)."""
    import json

    from bench.results import read_json_lines

    out_dir = Path(out_dir)
    files = []
    for src in sources:
        f = Path(src) / "results.jsonl" if Path(src).is_dir() else Path(src)
        if not f.is_file():
            raise FileNotFoundError(f"`merge` sources must be results.jsonl files or folders holding one, "
                                    f"got {str(src)!r}.")
        files.append(f)
    target = out_dir / "results.jsonl"
    if target.is_file() and all(f.resolve() != target.resolve() for f in files):
        files.insert(0, target)
    def rank(r: ResultRecord) -> tuple:
        return r.status == "ok", str(r.run.get("finished_at", ""))

    best: dict[str, ResultRecord] = {}
    seen = 0
    for f in files:
        for rec in read_records(f):
            seen += 1
            if rec.run_id not in best or rank(rec) > rank(best[rec.run_id]):
                best[rec.run_id] = rec
    switch_lines = list(dict.fromkeys(json.dumps(line, sort_keys=True) for f in files
                                      for line in read_json_lines(f.parent / "switch.jsonl")))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, lines in (("results.jsonl", [r.to_json() for r in best.values()]), ("switch.jsonl", switch_lines)):
        if name == "switch.jsonl" and not lines:
            continue
        tmp = out_dir / f".{name}.merging"
        with open(tmp, "w") as fh:
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out_dir / name)
    return list(best.values()), seen - len(best)


def estimate_s(spec: RunSpec, known: list[ResultRecord]) -> float | None:
    """Seconds for ``spec`` from measured runs of the same model and task (same method if any):
    load + steps x median step time + evaluation scaled to the number of test examples."""
    same = [r for r in known if r.status == "ok" and r.run.get("model") == spec.model
            and r.run.get("task") == spec.task and r.resources.get("step_time_median_s")]
    mine = [r for r in same if r.run.get("method") == spec.method] or same
    if not mine:
        return None
    med = lambda k: statistics.median(r.resources[k] or 0.0 for r in mine)  # noqa: E731
    per_test = statistics.median((r.resources["eval_time_s"] or 0.0) / max(1, r.run.get("n_test") or 1) for r in mine)
    n_test = spec.train.n_test or max(r.run.get("n_test") or 0 for r in mine)
    return med("load_time_s") + spec.train.steps * med("step_time_median_s") + per_test * n_test


def known_records(*roots: Path) -> list[ResultRecord]:
    """Every record found under the given folders (results stores and committed reports)."""
    out: list[ResultRecord] = []
    for root in roots:
        if Path(root).is_dir():
            for f in Path(root).rglob("results.jsonl"):
                out.extend(read_records(f))
    return out


def _measure_group_safely(group, repeats: int) -> dict:
    import traceback

    from bench.serving import measure_group

    try:
        return {"status": "ok", **measure_group(group, repeats=repeats)}
    except Exception as e:  # noqa: BLE001 - a failed measurement is recorded, not fatal
        return {"status": "failed", "error": "\n".join(traceback.format_exception(e)[-4:]),
                "run_ids": [r.run_id for r in group]}


def run_switch(records: list[ResultRecord], out_dir: Path, *, repeats: int = 20, force: bool = False,
               isolate: bool = True, log: Callable[[str], None] = print) -> list[dict]:
    """Measure task switching and serving for every group of runs that share all but the task;
    each measurement runs in its own process and is appended to ``out_dir/switch.jsonl``."""
    import json

    from bench.results import append_line, read_json_lines
    from bench.results import SWITCH_SCHEMA_VERSION
    from bench.serving import switch_groups

    path = Path(out_dir) / "switch.jsonl"
    done = {tuple(r.get("run_ids", [])) for r in read_json_lines(path)  # measured with this protocol
            if r.get("status") == "ok" and r.get("schema_version") == SWITCH_SCHEMA_VERSION}
    out = []
    groups = switch_groups(records)
    for i, group in enumerate(groups, 1):
        ids = tuple(r.run_id for r in group)
        if ids in done and not force:
            continue
        log(f"[switch {i}/{len(groups)}] {group[0].run['model']} {group[0].run['method']}: "
            f"{', '.join(r.run['task'] for r in group)}")
        missing = [f"{r.run['task']}: {r.run['artifact_dir']}" for r in group if not Path(r.run["artifact_dir"]).is_dir()]
        if missing:
            res = {"status": "failed", "run_ids": list(ids),
                   "error": f"artifact folder(s) missing, so this method cannot be measured: {'; '.join(missing)}."}
        elif isolate:
            res, timed_out, code, _ = call_isolated(_measure_group_safely, (group, repeats))
            if res is None:
                res = {"status": "timeout" if timed_out else "killed", "run_ids": list(ids),
                       "error": f"measurement process ended without a result (exit code {code})."}
        else:
            res = _measure_group_safely(group, repeats)
        res["schema_version"] = SWITCH_SCHEMA_VERSION
        append_line(path, json.dumps(res, sort_keys=True))
        if res["status"] == "ok":
            log(f"    warm switch {res['warm_switch']['median_s'] * 1e3:.3f} ms, cold switch "
                f"{res['cold_switch']['median_s'] * 1e3:.1f} ms (forward alone {res['forward']['median_s'] * 1e3:.1f} ms)")
        else:
            log(f"    -> {res['status']}: {' '.join((res.get('error') or '').strip().splitlines()[-1:])}")
        out.append(res)
    return out
