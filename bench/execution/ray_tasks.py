"""The Ray executor: each run of a suite is a Ray task, scheduled over every node of a cluster.

    peftbench run suite.toml --executor ray                 # a local Ray instance (this machine)
    RAY_ADDRESS=auto peftbench run suite.toml --executor ray   # the cluster this node belongs to

Scheduling, placement and retries are Ray's (no scheduler is written here). Each task asks for the
run's resources (``gpus_per_run`` GPUs, else ``cpus_per_run`` CPUs) and, on its worker, runs the
spec exactly as the local executor does: in a child forked from a pre-imported server, with the
same timeout, memory limit and failure records (``run_isolated``). The task returns the record and
this (driver) process appends it to the result store as it arrives, with the local executor's
atomic append, so resume works the same and nothing finished is lost if the driver dies.

A worker that dies (killed, its node lost) is Ray's business: the task is retried once
(``max_retries=1``), then the run is recorded as ``killed``. A run that fails by itself (exception,
NaN, OOM, timeout) is recorded as such at once, as locally: it is not retried.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from peft_bench.execution.local import SuiteOutcome, label, outcome_line
from peft_bench.results.schema import ResultRecord
from peft_bench.results.store import append_record
from peft_bench.core.spec import RunSpec
from peft_bench.engine.record import failure_record

RETRIES = 1  # a run whose worker died is tried once more, then recorded as killed


def _ray():
    try:
        import ray
    except ImportError:
        raise ValueError("`--executor ray` needs Ray: pip install 'peft-bench[ray]' "
                         "(or choose `--executor local`).") from None
    return ray


def task_name(spec: RunSpec) -> str:
    """The Ray task's name (and its worker's process title while it runs: ``ray::<name>``)."""
    return f"peftbench:{spec.run_id}"


def _run_on_worker(spec: RunSpec, out_dir: str, timeout_s: float | None, memory_limit_gb: float | None,
                   preload: list[str], isolate: bool = True) -> ResultRecord:
    """Body of the Ray task, on the worker: the local executor's isolated run, given this task's
    GPUs and CPU count (the run's child is forked from a server started earlier, whose
    environment may be another task's). ``isolate=False``: in the worker process itself."""
    import ray

    from peft_bench.execution import server
    from peft_bench.execution.local import run_isolated
    from peft_bench.engine.record import execute

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU") or 1
    env = {"OMP_NUM_THREADS": str(max(1, int(cpus)))}
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # set by Ray to this task's GPUs
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    if isolate:
        server.preload_models(preload)
        rec = run_isolated(spec, Path(out_dir), timeout_s, memory_limit_gb, env=env)
    else:
        os.environ.update(env)
        rec = execute(spec, Path(out_dir))
    rec.resources.executor = "ray"
    return rec


def run_ray(specs: list[RunSpec], out_dir: Path, *, address: str | None = None, cpus_per_run: float = 1,
            gpus_per_run: float | None = None, timeout_s: float | None = None,
            memory_limit_gb: float | None = None, isolate: bool = True,
            log: Callable[[str], None] = print) -> SuiteOutcome:
    """Run ``specs`` as Ray tasks, appending each record to ``out_dir/results.jsonl`` as it finishes.

    ``address``: a running cluster ("auto", "ray://host:10001"), else ``$RAY_ADDRESS``, else a Ray
    instance started on this machine for the suite. ``gpus_per_run``: None = 1 when the cluster has
    GPUs, else 0 (then ``cpus_per_run`` CPUs per run). ``isolate=False`` runs each spec in the
    Ray worker itself (no timeout or memory limit then: the worker is the run's process).
    """
    ray = _ray()
    out_dir = Path(out_dir).resolve()  # workers write artifacts here: a path valid on every node
    results = out_dir / "results.jsonl"
    outcome = SuiteOutcome()
    t0 = time.perf_counter()
    if not specs:
        return outcome
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        if gpus_per_run is None:
            gpus_per_run = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        remote = ray.remote(max_retries=RETRIES, retry_exceptions=False)(_run_on_worker)
        preload = sorted({s.model for s in specs})
        pending = {}
        for spec in specs:
            ref = remote.options(name=task_name(spec), num_cpus=cpus_per_run, num_gpus=gpus_per_run).remote(
                spec, str(out_dir), timeout_s, memory_limit_gb, preload, isolate)
            pending[ref] = spec
        res = f"{gpus_per_run:g} GPU" if gpus_per_run else f"{cpus_per_run:g} CPU"
        log(f"{len(specs)} runs submitted to Ray ({res} each; cluster: "
            f"{', '.join(f'{v:g} {k}' for k, v in sorted(ray.cluster_resources().items()) if k in ('CPU', 'GPU'))})")
        done = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(ready[0])
            try:
                rec = ray.get(ready[0])
            except ray.exceptions.RayError as e:  # the worker died on every attempt
                rec = failure_record(spec, "killed", (
                    f"the Ray worker running this run died {RETRIES + 1} times (tried once more after the "
                    f"first); last error: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"),
                    executor="ray")
            append_record(results, rec)
            outcome.records.append(rec)
            done += 1
            log(f"[{done}/{len(specs)}] {label(spec)} {outcome_line(rec)}")
    finally:
        if started_here:
            ray.shutdown()
    outcome.wall_s = time.perf_counter() - t0
    return outcome
