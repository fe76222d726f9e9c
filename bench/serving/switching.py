"""Serving several tasks from one model: task-switch latency, memory and mixed-batch throughput.

One protocol for every method, through the method interface only (``load``, ``activate``,
``unload``, ``forward_mixed``). Each figure is timed directly, on its own, never as a difference:

- warm switch A -> B: B's artifact is already in the model's memory; the time of ``activate(B)``
  after serving A, device-synchronised. No forward pass is inside it;
- cold switch A -> B: B is not in memory; the time to ``load`` its artifact from disk and
  ``activate`` it (no forward pass). The artifact files were read moments before, so the OS page
  cache is warm (recorded as ``page_cache: "warm"``): this is the cost of getting an artifact into
  the model, not of reading a disk;
- beside them: the forward pass alone on a fixed small batch of B (B active), and the time to
  first output (switch + B's first forward, timed as one block) after a warm and a cold switch;
- memory of serving N tasks at once: resident memory (CUDA: allocated) of the base model plus N
  artifacts (full fine-tuning: N full models) over the process before the base model was loaded.
  Every loaded model is made resident on load (``assets.models.make_resident``), so it can never be
  less than the base weights (``base_weight_bytes``, recorded beside it);
- throughput of a request stream from several tasks: (a) mixed batches, (b) batches grouped by
  task with a switch between groups, (c) one task only.

Times are medians and nearest-rank 90th percentiles of ``repeats`` measurements after ``warmup``
unmeasured ones.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from peft_bench.core.environment import environment
from peft_bench.engine.measurement import current_rss, release_memory, synchronize
from peft_bench.interface.method import Method, MixedBatchUnsupported, ModelContext


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in (0, 100]) of a non-empty list: the smallest value with at
    least q% of the values at or below it."""
    s = sorted(xs)
    k = math.ceil(q / 100 * len(s))
    return s[max(0, min(len(s), k) - 1)]


def summarize(xs: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(xs), "p90_s": percentile(xs, 90), "n": len(xs)}


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def _memory(device: torch.device) -> int:
    if device.type == "cuda":
        synchronize(device)
        return torch.cuda.memory_allocated(device)
    return current_rss()


def _clock(device: torch.device, *steps: Callable[[], None]) -> list[float]:
    """Run ``steps`` one after the other; the device-synchronised time from the start to the end of
    each (cumulative): [end of step 1, end of step 2, ...]."""
    synchronize(device)
    t0 = time.perf_counter()
    out = []
    for fn in steps:
        fn()
        synchronize(device)
        out.append(time.perf_counter() - t0)
    return out


def measure_switch(method: Method, ctx: ModelContext, load_base: Callable[[], torch.nn.Module],
                   artifacts: dict[str, Path], batches: dict[str, Batch], device: torch.device,
                   repeats: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Switch latencies and serving memory for ``artifacts`` (task -> saved artifact folder)."""
    if len(artifacts) < 2:
        raise ValueError(f"a switch needs at least two tasks' artifacts, got {sorted(artifacts)}.")
    tasks = sorted(artifacts)
    release_memory()
    mem0 = _memory(device)
    base = load_base().to(device)
    base_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    model = base
    for t in tasks:
        model = method.load(model, artifacts[t], ctx, t)
    model.eval()

    def forward(task: str) -> None:
        b = batches[task]
        with torch.inference_mode():
            model(input_ids=b.input_ids, attention_mask=b.attention_mask)

    def activate(task: str) -> Callable[[], None]:
        return lambda: method.activate(model, task)

    pairs = [(a, b) for a in tasks for b in tasks if a != b]
    times: dict[str, list[float]] = {k: [] for k in ("warm_switch", "warm_first_output", "forward",
                                                     "cold_switch", "cold_first_output")}
    for i in range(warmup + repeats):
        for a, b in pairs:
            method.activate(model, a)
            forward(a)  # serving A
            switched, first = _clock(device, activate(b), lambda: forward(b))  # "serve B" ... B's output
            (alone,) = _clock(device, lambda: forward(b))  # B active: the forward alone
            if i >= warmup:
                times["warm_switch"].append(switched)
                times["warm_first_output"].append(first)
                times["forward"].append(alone)
    # every task has now been served, and every model was made resident when it was loaded
    release_memory()
    mem_n = _memory(device) - mem0
    for i in range(warmup + repeats):
        for a, b in pairs:
            method.activate(model, a)  # serving A ...
            model = method.unload(model, b)  # ... and B is not in the model's memory

            def load_b() -> None:
                nonlocal model
                model = method.load(model, artifacts[b], ctx, b)
                model.eval()
                method.activate(model, b)

            switched, first = _clock(device, load_b, lambda: forward(b))
            if i >= warmup:
                times["cold_switch"].append(switched)
                times["cold_first_output"].append(first)
    return {
        "tasks": tasks, "n_tasks": len(tasks), "batch_size": int(next(iter(batches.values())).input_ids.shape[0]),
        **{k: summarize(v) for k, v in times.items()},
        "serving_mem_bytes": mem_n, "base_weight_bytes": base_bytes,
        "serving_mem_kind": "cuda_allocated" if device.type == "cuda" else "cpu_rss",
        "page_cache": "warm", "model": model,
    }


def switch_groups(records) -> list[list]:
    """Runs that differ only by task (same model, method, config, seed, training) and recorded an
    artifact: each group of >= 2 tasks is one switch measurement."""
    groups: dict[str, list] = {}
    for r in records:
        if r.status != "ok" or not r.run.artifact_dir:
            continue  # (an artifact recorded but gone from disk fails its group's measurement, loudly)
        run = r.run
        key = repr((run.model, run.method, sorted(run.method_config.items()), sorted((run.train or {}).items())))
        groups.setdefault(key, []).append(r)
    return [sorted(g, key=lambda r: r.run.task) for g in groups.values() if len({r.run.task for r in g}) >= 2]


def measure_group(group, repeats: int = 20, warmup: int = 1, batch_size: int = 4,
                  stream_per_task: int = 32, throughput_repeats: int = 3, throughput_batch: int = 8) -> dict[str, Any]:
    """Switch latency, serving memory and throughput for one group of runs (see ``switch_groups``).
    The runs' own specs, device, model context and encoded test examples come from the engine
    (``engine.prepare`` / ``engine.data``), as in training: only the model is loaded here."""
    from transformers.utils import logging as hf_logging

    from peft_bench.assets import models
    from peft_bench.core.spec import RunSpec
    from peft_bench.engine.data import encode, run_data
    from peft_bench.engine.distributed import cpu_threads
    from peft_bench.engine.objectives import objective_for
    from peft_bench.engine.prepare import device_for, model_context, plugins

    hf_logging.disable_progress_bar()
    specs = {r.run.task: RunSpec.from_record(r.run.to_dict()).resolve() for r in group}
    first = next(iter(specs.values()))
    train = first.train
    method = plugins(first)[0]
    mspec = models.resolve(first.model, first.trust_remote_code)
    device = device_for(train)
    torch.set_num_threads(cpu_threads(train.num_threads))
    tasks = {name: plugins(spec)[1] for name, spec in specs.items()}
    num_labels = {t.num_labels for t in tasks.values()}
    if len(num_labels) != 1:
        raise ValueError(f"tasks {sorted(tasks)} have different numbers of labels {num_labels}: one head size per model.")
    n_labels = num_labels.pop()
    # the tokenizer only: no model may be loaded before the serving-memory baseline is taken
    ctx = model_context(mspec, next(iter(tasks.values())), models.load_tokenizer(mspec))
    model_path = models.model_dir(mspec)
    encoded, batches = {}, {}
    for name, task in tasks.items():
        obj = objective_for(mspec.kind, task, ctx.tokenizer, train.max_length)
        rows = run_data(specs[name], task, model_path, obj).test_rows  # the run's test examples, in split order
        rows = {k: v[:stream_per_task] for k, v in rows.items()}
        encoded[name] = [{"input_ids": e["input_ids"]} for e in encode(rows, obj, list(task.input_fields))]
        enc = ctx.tokenizer.pad(encoded[name][:batch_size], return_tensors="pt")
        batches[name] = Batch(enc["input_ids"].to(device), enc["attention_mask"].to(device))
    artifacts = {r.run.task: Path(r.run.artifact_dir) for r in group}
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    res = measure_switch(method, ctx, lambda: models.load(mspec, n_labels).model,
                         artifacts, batches, device, repeats=repeats, warmup=warmup)
    model = res.pop("model")
    stream = [(t, encoded[t][i]) for i in range(stream_per_task) for t in sorted(encoded) if i < len(encoded[t])]
    res["throughput"] = measure_throughput(method, model, stream, ctx.tokenizer.pad, throughput_batch, device,
                                           repeats=throughput_repeats)
    res["throughput"].update(repeats=throughput_repeats, batch_size=throughput_batch, requests=len(stream))
    res.update({"model": first.model, "method": first.method, "method_config": first.resolved_config,
                "seed": train.seed, "run_ids": [r.run_id for r in group],
                "artifact_bytes": {r.run.task: r.params.stored_bytes for r in group},
                "device": device.type, "repeats": repeats, "warmup": warmup,
                # like a result record: what it was measured with, and when
                "env": environment(device), "started_at": started,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return res


def measure_throughput(method: Method, model: torch.nn.Module, stream: list[tuple[str, dict]], pad,
                       batch_size: int, device: torch.device, repeats: int = 3) -> dict[str, float | None]:
    """Examples/s over ``stream`` (task, encoded example) for (a) mixed batches, (b) batches grouped
    by task with a switch between groups, (c) the same requests all served by one task's artifact
    (same inputs, no switching, no mixing: the baseline); best of ``repeats``. Where the method's
    mixed path replaces the library's own (``forward_mixed_reference``), that one too."""

    def batched(items):
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            enc = pad([{"input_ids": f["input_ids"]} for _, f in chunk], return_tensors="pt")
            yield [t for t, _ in chunk], enc["input_ids"].to(device), enc["attention_mask"].to(device)

    first = stream[0][0]
    grouped = sorted(stream, key=lambda r: r[0])

    def run_single() -> None:
        method.activate(model, first)
        for _, ids, mask in batched(stream):
            model(input_ids=ids, attention_mask=mask)

    def run_grouped() -> None:
        current = None
        for tasks, ids, mask in batched(grouped):
            for t in dict.fromkeys(tasks):  # a batch straddling two groups runs once per task
                if t != current:
                    method.activate(model, t)
                    current = t
                rows = torch.tensor([i for i, x in enumerate(tasks) if x == t])
                model(input_ids=ids[rows], attention_mask=mask[rows])

    def mixed(forward) -> Callable[[], None]:
        def run() -> None:
            for tasks, ids, mask in batched(stream):
                forward(model, ids, mask, tasks)
        return run

    modes = {"single_task": run_single, "grouped": run_grouped, "mixed": mixed(method.forward_mixed)}
    if method.forward_mixed_reference is not None:  # the library's own path beside the method's
        modes["mixed_reference"] = mixed(method.forward_mixed_reference)
    best = {m: float("inf") for m in modes}
    unsupported = None
    for _ in range(repeats):  # modes interleaved, best of `repeats`: drift hits all modes alike
        for name, fn in modes.items():
            if name.startswith("mixed") and unsupported is not None:
                continue
            synchronize(device)
            t0 = time.perf_counter()
            try:
                with torch.inference_mode():
                    fn()
            except MixedBatchUnsupported as e:
                unsupported = str(e)
                continue
            synchronize(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    n = len(stream)
    out: dict[str, Any] = {"single_task_examples_per_s": n / best["single_task"],
                           "grouped_examples_per_s": n / best["grouped"]}
    if unsupported is None:
        out["mixed_examples_per_s"] = n / best["mixed"]
        out["mixed_over_single"] = out["mixed_examples_per_s"] / out["single_task_examples_per_s"]
        if "mixed_reference" in best:
            out["mixed_reference_examples_per_s"] = n / best["mixed_reference"]
            out["mixed_reference_over_single"] = out["mixed_reference_examples_per_s"] / out["single_task_examples_per_s"]
    else:
        out["mixed_examples_per_s"] = out["mixed_over_single"] = None
        out["mixed_unsupported"] = unsupported
    return out
