"""The local executor: one child process per run, failures recorded as results, resume.

Each run executes in a child forked from a forkserver that imported torch, transformers, peft &
co once (``peft_bench.execution.preload``) and never ran a torch op: the child pays no interpreter or import
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

from peft_bench.execution import server
from peft_bench.results.store import ResultRecord, append_record, read_records
from peft_bench.core.spec import RunSpec
from peft_bench.engine.record import execute, failure_record

Mode = Literal["resume", "rerun_failed", "force"]


def die_with_parent() -> bool:
    """Linux: this process is killed when its parent dies (a run with the server that forked it,
    the server with the suite process: see execution/_server_exit.py), so killing a suite never leaves
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
        record = failure_record(spec, status, error)
    inner = record.resources.run_wall_s
    record.resources.isolated_wall_s = wall
    # what isolation costs: the child's wall time outside the run itself (fork, hand-back)
    record.resources.isolation_overhead_s = wall - inner if inner is not None else None
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
        xs = [r.resources.isolation_overhead_s for r in self.records]
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None


def label(spec: RunSpec) -> str:
    text = f"{spec.model} {spec.task} {spec.method}"
    if spec.method_config:
        text += " " + " ".join(f"{k}={v}" for k, v in spec.method_config.items())
    return f"{text} seed {spec.train.seed}"


def outcome_line(rec: ResultRecord) -> str:
    main = next(iter(rec.metrics), "accuracy")  # the task's first metric: what it is chosen on
    acc = rec.metric(main)
    return (f"-> {rec.status}" + (f", {main} {acc:.3f}" if acc is not None else "")
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


def estimate_s(spec: RunSpec, known: list[ResultRecord]) -> float | None:
    """Seconds for ``spec`` from measured runs of the same model and task (same method if any):
    load + steps x median step time + evaluation scaled to the number of examples it scores (test,
    and validation at each evaluation point)."""
    same = [r for r in known if r.status == "ok" and r.run.model == spec.model
            and r.run.task == spec.task and r.resources.step_time_median_s]
    mine = [r for r in same if r.run.method == spec.method] or same
    if not mine:
        return None
    med = lambda k: statistics.median(getattr(r.resources, k) or 0.0 for r in mine)  # noqa: E731
    per_test = statistics.median((r.resources.eval_time_s or 0.0) / max(1, r.run.n_test or 1) for r in mine)
    n_test = spec.train.n_test or max(r.run.n_test or 0 for r in mine)
    n_val = spec.train.n_validation * spec.train.eval_points  # (0 = all: counted as none, unknown here)
    return med("load_time_s") + spec.train.steps * med("step_time_median_s") + per_test * (n_test + n_val)


def known_records(*roots: Path) -> list[ResultRecord]:
    """Every record found under the given folders (results stores and committed reports)."""
    out: list[ResultRecord] = []
    for root in roots:
        if Path(root).is_dir():
            for f in Path(root).rglob("results.jsonl"):
                out.extend(read_records(f))
    return out
