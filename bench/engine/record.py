"""One run, start to record: ``execute(spec, out_dir)`` trains (validating along the way), saves
the artifact, evaluates, writes the per-example predictions beside the store
(``results.predictions``) and returns its ``ResultRecord``; any failure becomes a record too. ``failure_record`` is the one place
a failed run's record is built (here, and by the executors for a run that never reported back).

    spec = RunSpec(model="minilm", task="sentiment", method="lora").resolve()
    record = execute(spec, out_dir=Path("results/quick"))

Every method goes through the same loop, optimizer family (AdamW), schedule (linear warm-up and
decay), steps, batch size and seed; only the learning rate is per method (its config).
"""

from __future__ import annotations

import shutil
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from peft_bench.core.environment import environment
from peft_bench.core.paths import contained
from peft_bench.core.spec import RunSpec
from peft_bench.engine.distributed import per_process
from peft_bench.engine.loop import Diverged, evaluate, train
from peft_bench.engine.measurement import gc_frozen, majority_baseline, stored_size
from peft_bench.engine.prepare import prepare
from peft_bench.engine.throughput import gather_counts, throughput
from peft_bench.results.predictions import write_predictions
from peft_bench.results.schema import (Baselines, Curves, Env, Metric, Params, Resources, ResultRecord, RunInfo,
                                        Status)


CURVE_POINTS = 50  # at most this many points of the training-loss curve, whatever the steps


def loss_curve(losses: list[float], points: int = CURVE_POINTS) -> list[list[float]]:
    """[step, mean loss of the steps since the previous point]: every step's loss, averaged in
    windows of ceil(steps / points) steps."""
    k = -(-len(losses) // points) if losses else 1
    return [[min(i + k, len(losses)), sum(losses[i:i + k]) / len(losses[i:i + k])] for i in range(0, len(losses), k)]


def train_and_evaluate(spec: RunSpec, art_dir: Path, store_dir: Path) -> ResultRecord:
    started = now()
    run = prepare(spec)
    acc = run.accelerator
    out = train(run)
    # the artifact is what a user deploys for this task (written once, by the main process)
    stored: dict[str, int] = {}
    t_save = time.perf_counter()
    if acc.is_main_process:
        unwrapped = acc.unwrap_model(run.model)
        if art_dir.exists():
            shutil.rmtree(art_dir)
        art_dir.mkdir(parents=True)
        run.method.save(unwrapped, art_dir)
        stored = stored_size(art_dir)
    acc.wait_for_everyone()
    save_time = time.perf_counter() - t_save
    metrics, test_pred, ev, mem_eval = evaluate(run)
    forgetting = run.forgetting.measure(acc.unwrap_model(run.model), run.device) if run.forgetting else {}
    losses = out.losses
    val = out.val_predictions
    predictions = None
    if acc.is_main_process:
        splits = {"test": test_pred.as_dict(), **({"validation": val.as_dict()} if val else {})}
        predictions = write_predictions(store_dir, spec.run_id, list(run.task.label_words), splits)
    # memory: the peak of each process (one per device), and their max as the run's figure
    train_peaks, eval_peaks = per_process(acc, out.memory.peak_bytes), per_process(acc, mem_eval.peak_bytes)
    train_res = per_process(acc, out.memory.peak_reserved_bytes)
    eval_res = per_process(acc, mem_eval.peak_reserved_bytes)
    peak = lambda xs: None if xs[0] is None else int(max(xs))  # noqa: E731
    train_time = out.timer.total_s - out.val_time_s if losses else 0.0
    rate = throughput(acc.unwrap_model(run.model), run.ctx.head_names, gather_counts(acc, out.tokens), train_time,
                      run.device, spec.train.mixed_precision, acc.num_processes, out.needs_input_grad)
    return ResultRecord(
        run=run_info(spec, started, n_train=run.n_train, n_test=run.n_test, artifact_dir=str(art_dir),
                     n_validation=len(run.val_ids), predictions=predictions),
        metrics={k: Metric(**m) for k, m in metrics.items()},
        validation={k: Metric(**m) for k, m in (out.validation[-1][1] if out.validation else {}).items()},
        params=Params(**run.params, **stored),
        resources=Resources(
            peak_mem_train_bytes=peak(train_peaks), peak_mem_eval_bytes=peak(eval_peaks),
            peak_mem_train_reserved_bytes=peak(train_res), peak_mem_eval_reserved_bytes=peak(eval_res),
            peak_mem_train_per_process_bytes=[int(x) for x in train_peaks],
            peak_mem_eval_per_process_bytes=[int(x) for x in eval_peaks],
            peak_mem_kind=out.memory.kind, **run.baseline.as_resources(), load_time_s=run.load_time_s,
            setup_time_s=run.setup_time_s, save_time_s=save_time,
            train_time_s=train_time, val_time_s=out.val_time_s, **rate,
            step_time_median_s=out.timer.median_step_s, train_examples_per_s=out.timer.examples_per_s,
            eval_time_s=ev.total_s, eval_examples_per_s=ev.examples_per_s, train_steps=len(losses),
            first_loss=sum(losses[:10]) / len(losses[:10]) if losses else None,
            final_loss=sum(losses[-10:]) / len(losses[-10:]) if losses else None, **forgetting,
        ),
        curves=Curves(train_loss=loss_curve(losses),
                      validation=[{"step": step, **{k: m["value"] for k, m in ms.items()}} for step, ms in out.validation]),
        baselines=Baselines(**majority_baseline(run.train_labels, test_pred.gold, val.gold if val else None)),
        env=Env(**environment(run.device), processes=acc.num_processes,
                distributed_type=str(acc.distributed_type).split(".")[-1]),
    )


def evaluate_saved(spec: RunSpec, art_dir: Path) -> dict[str, dict]:
    """Test-split metrics of a saved artifact, loaded onto a fresh base model and evaluated by this
    process alone: what a user deploying the artifact gets (and the check of the metrics a
    multi-process run gathered)."""
    run = prepare(spec)
    # loaded beside the freshly prepared (untrained) weights and made active: the same life-cycle
    # as serving several tasks, without loading the base model a second time
    run.model = run.method.load(run.model, Path(art_dir), run.ctx, name="saved").to(run.device)
    metrics, _, _, _ = evaluate(run)
    return metrics


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def run_info(spec: RunSpec, started: str | None = None, **facts: Any) -> RunInfo:
    """The ``run`` section of a spec's record (``facts``: n_train, n_test, artifact_dir)."""
    return RunInfo(run_id=spec.run_id, **spec.as_dict(), started_at=started or now(), finished_at=now(), **facts)


def failure_record(spec: RunSpec, status: Status, error: str, **resources: Any) -> ResultRecord:
    """The record of a run that produced no result: the one place such a record is built (a run
    that raised, timed out, was killed, or whose worker died). A spec that cannot be resolved
    (unknown name, bad config) is recorded under ``RunSpec.fallback_id``."""
    try:
        run = run_info(spec.resolve())
    except Exception:  # noqa: BLE001 - the spec itself is invalid
        run = RunInfo(run_id=spec.fallback_id(), model=spec.model, task=spec.task, method=spec.method,
                      method_config=dict(spec.method_config), suite=spec.suite, started_at=now(), finished_at=now())
    return ResultRecord(run=run, status=status, error=error, resources=Resources(**resources))


def classify(e: BaseException) -> Status:
    """The status of a run that raised ``e``."""
    return "diverged" if isinstance(e, Diverged) else "oom" if _is_oom(e) else "failed"


def execute(spec: RunSpec, out_dir: Path) -> ResultRecord:
    """Run one spec; any failure becomes a result record with its status and error tail."""
    t0 = time.perf_counter()
    try:
        spec = spec.resolve()
        art_dir = contained(Path(out_dir) / "artifacts" / spec.run_id, out_dir, "the artifact folder")
        with gc_frozen():
            record = train_and_evaluate(spec, art_dir, Path(out_dir))
        record.resources.run_wall_s = time.perf_counter() - t0
        return record
    except Exception as e:  # noqa: BLE001 - every failure is a result, not a crash of the suite
        tail = "".join(traceback.format_exception(e)).strip().splitlines()[-8:]
        return failure_record(spec, classify(e), "\n".join(tail), run_wall_s=time.perf_counter() - t0)


def _is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return (isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in text
            or "can't allocate memory" in text or "cannot allocate memory" in text)
