"""The Python API. The ``peftbench`` command is a thin layer over these functions.

    from peft_bench import run_suite, load_records, summarize

    records = run_suite("quick", out="results", overrides={"steps": 50})
    table = summarize(load_records("results/quick"))   # the table every report is made from

``run_suite`` runs a built-in suite name, a suite file or a ``Suite`` object into
``<out>/<suite name>/results.jsonl`` (resuming: runs already recorded are skipped), measures task
switching if the suite asks for it, writes the report, and returns every record of the store.
``run`` does the same and returns a ``SuiteRun`` (what ran, what failed, the report, an exit code).
"""

from __future__ import annotations

import contextlib
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from peft_bench.core.config import parse_overrides
from peft_bench.core.suite import Suite
from peft_bench.results.schema import ResultRecord

Mode = Literal["resume", "rerun_failed", "force"]


@dataclass
class SuiteRun:
    """What ``run`` did: the store's records afterwards, the runs' outcome, the report."""

    suite: Suite
    out_dir: Path
    todo: list = field(default_factory=list)  # the specs that were (or, dry run: would be) run
    records: list[ResultRecord] = field(default_factory=list)  # every record of the store
    outcome: Any = None  # execution.local.SuiteOutcome (None for a dry run)
    switch_failed: bool = False
    report: Path | None = None
    report_error: str | None = None

    @property
    def results(self) -> Path:
        return self.out_dir / "results.jsonl"

    @property
    def exit_code(self) -> int:
        """0: every run ok and the report written; 130: interrupted; 1: otherwise."""
        if self.outcome is not None and self.outcome.interrupted:
            return 130
        failed = self.outcome is not None and bool(self.outcome.failed)
        return 1 if failed or self.switch_failed or self.report_error else 0


def _suite(suite: str | Path | Suite, overrides: dict[str, Any] | list[str] | None) -> Suite:
    from peft_bench.core.suite import load_suite

    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    if isinstance(suite, Suite):
        if overrides:
            raise ValueError("`overrides` apply to a suite name or file; a `Suite` object is already expanded "
                             "(load it with load_suite(path, overrides) instead).")
        return suite
    return load_suite(str(suite), overrides or {})


def run(suite: str | Path | Suite = "quick", out: str | Path = "results",
        overrides: dict[str, Any] | list[str] | None = None, *, mode: Mode = "resume",
        executor: Literal["local", "ray"] = "local", isolate: bool = True, switch: bool = True,
        timeout_s: float | None = None, shard: tuple[int, int] | None = None, dry_run: bool = False,
        ray_address: str | None = None, cpus_per_run: float = 1, gpus_per_run: float | None = None,
        command: str | None = None, log: Callable[[str], None] = print) -> SuiteRun:
    """Run a suite (see the module doc); every problem of the suite, its task data or this machine
    is raised before anything runs. ``timeout_s`` overrides the suite's ``timeout_s``; ``shard``
    (i, n) runs every n-th run into ``<out>/<name>/shard-i-of-n``; ``dry_run`` only logs the plan."""
    from peft_bench.core.paths import contained
    from peft_bench.core.suite import check_task_data
    from peft_bench.engine import distributed
    from peft_bench.execution.local import select, shard as take_shard
    from peft_bench.results.store import check_writable, store_lock

    launched = distributed.launched()  # one of the processes of `accelerate launch` / torchrun
    if launched and executor != "local":
        raise ValueError(f"`executor` must be 'local' under `accelerate launch` (every process runs "
                         f"the suite's runs together), got {executor!r}.")
    if executor not in ("local", "ray"):
        raise ValueError(f"`executor` must be 'local' or 'ray', got {executor!r}.")
    isolate_here = isolate and not launched  # the process group lives in the launched processes
    # runs will be forked from the run server: start it now, and use the wait (below)
    server_first = isolate_here and executor == "local" and not dry_run
    if server_first:
        from peft_bench.execution.server import start_early

        start_early(str(suite.path) if isinstance(suite, Suite) else str(suite))
    suite = _suite(suite, overrides)
    check_task_data(suite)  # local task data, read and checked before any run (also for a dry run)
    specs, out_dir = suite.runs, contained(Path(out) / suite.name, out, "the result folder")
    if shard:
        specs, out_dir = take_shard(specs, *shard), out_dir / f"shard-{shard[0]}-of-{shard[1]}"
    main = distributed.is_main()
    say = log if main else (lambda m: None)
    timeout = timeout_s if timeout_s is not None else suite.timeout_s
    if timeout is not None and not isolate_here and executor == "local":
        if timeout_s is not None:
            raise ValueError("`--timeout` needs a run process to kill: it cannot be enforced with `--no-isolate` "
                             "or under `accelerate launch`; drop one of them.")
        say(f"note: the suite's timeout_s ({timeout:g} s) is not enforced: runs are not in their own processes")
        timeout = None
    result = SuiteRun(suite=suite, out_dir=out_dir)
    writing = main and not dry_run
    if writing:
        check_writable(out_dir)  # a read-only disk or a file in its place is found before any run
    # one writer per store, from before it decides what is left to run: a second suite on it is refused
    with store_lock(out_dir) if writing else contextlib.nullcontext():
        todo, recorded = select(specs, result.results, mode)
        todo = _runnable(todo, suite, result)  # deferred trials wait for the choice on the search seeds
        todo_ids = set(distributed.broadcast([s.run_id for s in todo]))  # the main process's view, for all
        result.todo = [s for s in specs if s.run_id in todo_ids]
        waiting = sum(s.run_id in suite.deferred and s.run_id not in recorded and s not in result.todo for s in specs)
        say(f"suite {suite.name} ({suite.path}){f' shard {shard[0]}/{shard[1]}' if shard else ''}: {len(specs)} runs, "
            f"{len(specs) - len(result.todo) - waiting} skipped (already recorded in {result.results}), "
            f"{len(result.todo)} to run"
            + (f", then the chosen of {waiting} trial run(s) on the other seeds" if waiting else "")
            + (f", each on {distributed.state().num_processes} processes" if launched else ""))
        if dry_run:
            _log_plan(specs, result.todo, recorded, Path(out), say, suite.deferred)
            return result
        if server_first and result.todo and not shard:
            from peft_bench.results import plots

            plots.warm_up()  # while the run server still imports (see its doc)
        _execute(result, executor=executor, isolate=isolate, isolate_here=isolate_here, timeout=timeout,
                 switch=switch, shard=shard, out=Path(out), ray=(ray_address, cpus_per_run, gpus_per_run),
                 command=command or _command(suite, overrides, out), say=say, mode=mode)
    return result


def _execute(result: SuiteRun, *, executor, isolate, isolate_here, timeout, switch, shard, out: Path, ray,
             command: str, say, mode: Mode = "resume") -> None:
    """The part of ``run`` that runs: executor, then (main process) switching and the report."""
    from peft_bench.engine import distributed
    from peft_bench.execution.local import run_local, select
    from peft_bench.results.report import write_report
    from peft_bench.results.store import read_json_lines, read_records

    suite, out_dir = result.suite, result.out_dir
    main = distributed.is_main()

    def execute(specs: list):
        if executor == "ray":
            from peft_bench.execution.ray_tasks import run_ray

            address, cpus, gpus = ray
            return run_ray(specs, out_dir, address=address, cpus_per_run=cpus, gpus_per_run=gpus, timeout_s=timeout,
                           memory_limit_gb=suite.memory_limit_gb, isolate=isolate, log=say)
        return run_local(specs, out_dir, isolate=isolate_here, timeout_s=timeout,
                         memory_limit_gb=suite.memory_limit_gb, write=main, log=say)

    result.outcome = execute(result.todo)
    if suite.deferred and not shard and not result.outcome.interrupted:
        # the trials on the search seeds are done: the chosen ones run their other seeds (decided
        # by the main process, which wrote the records, for every process of a launch)
        done = {s.run_id for s in result.todo}
        rest = [s for s in _runnable(select(suite.runs, result.results, mode)[0], suite, result)
                if s.run_id not in done and s.run_id in suite.deferred] if main else []
        ids = set(distributed.broadcast([s.run_id for s in rest]))
        rest = [s for s in suite.runs if s.run_id in ids]
        if rest:
            say(f"chosen on validation: {len(rest)} more run(s), the chosen trials on the other seeds")
            more = execute(rest)
            result.todo += rest
            result.outcome.records += more.records
            result.outcome.interrupted = more.interrupted
    if not main:
        return
    result.records = read_records(result.results) if result.results.exists() else []
    if result.outcome.interrupted:
        return
    if shard:
        root, (i, n) = out / suite.name, shard
        say(f"shard {i}/{n} done: {result.results}. When every shard is done:\n"
            f"  peftbench merge {root}/shard-*-of-{n} --out {root}\n"
            f"  then `peftbench switch {root}` (if the suite measures switching) and `peftbench report {root}`"
            + (f"\n  (the suite's `search_seeds`: then `peftbench run {suite.path} --out {out}` runs the chosen "
               "trials on the other seeds)" if suite.deferred else ""))
        return
    if suite.switch and switch:
        from peft_bench.serving.suite import run_switch

        measured = run_switch(result.records, out_dir, repeats=suite.switch_repeats, isolate=isolate, log=say)
        result.switch_failed = any(m.get("status") != "ok" for m in measured)  # said above, and in the exit code
    try:
        result.report = write_report(result.records, out_dir, f"peft-bench report: {suite.name}", command,
                                     notes=suite.description, switch=read_json_lines(out_dir / "switch.jsonl"),
                                     studies=suite.studies)
        say(f"report: {result.report}")
    except OSError as e:  # the records are whole; the report can be written later
        result.report_error = f"the report could not be written ({e.strerror or e}); the records are complete: " \
                              f"`peftbench report {out_dir}` writes it once there is room."


def _runnable(todo: list, suite: Suite, result: SuiteRun) -> list:
    """``todo`` without the deferred trials that are not (yet) the chosen ones."""
    if not suite.deferred:
        return todo
    from peft_bench.results.selection import eligible
    from peft_bench.results.store import read_records

    records = read_records(result.results) if result.results.exists() else []
    ok = {s.run_id for s in eligible([s for s in todo if s.run_id in suite.deferred], records)}
    return [s for s in todo if s.run_id not in suite.deferred or s.run_id in ok]


def _log_plan(specs, todo, recorded: dict, out: Path, say, deferred=frozenset()) -> None:
    """A dry run: every run with its state and, from measured runs, an estimate of its time (a
    deferred trial waiting for the choice counts as its share: one trial of its search runs)."""
    from peft_bench.core.paths import CHECKOUT
    from peft_bench.execution.local import estimate_s, known_records
    from peft_bench.results.units import fmt_s

    import math

    known = known_records(out, CHECKOUT / "reports")
    total, unknown, later = 0.0, 0, 0.0
    waiting = [s for s in specs if s.run_id in deferred and s not in todo and s.run_id not in recorded]
    for s in specs:
        est = estimate_s(s, known) if s in todo or s in waiting else None
        if s in waiting:  # one trial of its search will run these seeds
            later += (est or 0.0) / math.prod(len(v) for v in s.search["space"].values())
            state = "after choice"
        else:
            total += est or 0.0
            unknown += s in todo and est is None
            state = recorded.get(s.run_id, "todo") if s in todo else f"skip ({recorded.get(s.run_id)})"
        say(f"  {state:<14} {s.run_id:<60} {'~' + fmt_s(est) if est is not None else ''}")
    say(f"estimated time: ~{(total + later) / 60:.1f} min for {len(todo) - unknown} runs with measured step times"
        + (f" and the chosen trials' other seeds (~{later / 60:.1f} min)" if waiting else "")
        + (f"; {unknown} runs have none (no earlier run of that model and task)" if unknown else ""))


def _command(suite: Suite, overrides, out) -> str:
    """The command that reproduces a run started from Python (for the report)."""
    sets = overrides if isinstance(overrides, list) else [f"{k}={v}" for k, v in (overrides or {}).items()]
    return " ".join(["peftbench run", shlex.quote(suite.path or suite.name), "--out", shlex.quote(str(out))]
                    + [f"--set {shlex.quote(s)}" for s in sets])


def run_suite(suite: str | Path | Suite = "quick", out: str | Path = "results",
              overrides: dict[str, Any] | list[str] | None = None, **options: Any) -> list[ResultRecord]:
    """Run a suite and return every record of its store (``options``: those of ``run``)."""
    return run(suite, out, overrides, **options).records


def load_records(path: str | Path, warn: bool = True) -> list[ResultRecord]:
    """The records of a result store: a ``results.jsonl`` or a folder holding one."""
    from peft_bench.results.store import load_records as load

    return load(path, warn=warn)


def summarize(records: list[ResultRecord], switch: list[dict] | None = None):
    """The pandas table every report, figure and comparison is made from: one row per variant
    (runs that differ only by seed, pooled). Columns: see ``results.aggregate``."""
    from peft_bench.results.aggregate import summarize as table

    return table(records, switch)
