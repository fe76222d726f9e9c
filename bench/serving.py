"""Serving several tasks from one model: task-switch latency, memory and mixed-batch throughput.

One protocol for every method, through the method interface only (``load``, ``activate``,
``unload``, ``forward_mixed``):

- warm switch A -> B: B is loaded; time from "serve B" (``activate``) to B's first output (one
  forward on a fixed small batch of B), after serving A;
- cold switch A -> B: B is not in the model's memory; time to ``load`` its artifact from disk,
  activate it and run the same forward. The artifact files were read moments before, so the OS
  page cache is warm (recorded as ``page_cache: "warm"``): this is the cost of getting an
  artifact into the model, not of reading a disk;
- forward alone on the same batch, so that the switch cost itself (switch - forward) is known;
- memory of serving N tasks at once: resident memory (CUDA: allocated) of the base model plus N
  artifacts (full fine-tuning: N full models) over the process before the base model was loaded,
  taken after every task has been served (weights are memory-mapped and become resident when used);
- throughput of a request stream from several tasks: (a) mixed batches, (b) batches grouped by
  task with a switch between groups, (c) one task only.

Times are medians and 90th percentiles of ``repeats`` measurements after ``warmup`` unmeasured
ones, each ended by a device synchronisation.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from bench.measurement import current_rss, release_memory, synchronize
from bench.method import Method, MixedBatchUnsupported, ModelContext


SWITCH_SCHEMA_VERSION = 1


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


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


def measure_switch(method: Method, ctx: ModelContext, load_base: Callable[[], torch.nn.Module],
                   artifacts: dict[str, Path], batches: dict[str, Batch], device: torch.device,
                   repeats: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Switch latencies and serving memory for ``artifacts`` (task -> saved artifact folder)."""
    if len(artifacts) < 2:
        raise ValueError(f"a switch needs at least two tasks' artifacts, got {sorted(artifacts)}.")
    tasks = sorted(artifacts)
    release_memory()
    mem0 = _memory(device)
    model = load_base().to(device)
    for t in tasks:
        model = method.load(model, artifacts[t], ctx, t)
    model.eval()

    def forward(task: str) -> None:
        b = batches[task]
        with torch.inference_mode():
            model(input_ids=b.input_ids, attention_mask=b.attention_mask)
        synchronize(device)

    def timed(fn) -> float:
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    pairs = [(a, b) for a in tasks for b in tasks if a != b]
    warm, act, fwd, cold = [], [], [], []
    for i in range(warmup + repeats):
        for a, b in pairs:
            method.activate(model, a)
            forward(a)  # serving A
            t_act = timed(lambda: method.activate(model, b))  # "serve B" ...
            t_first = timed(lambda: forward(b))  # ... until B's first output
            f = timed(lambda: forward(b))  # B active: the forward alone
            if i >= warmup:
                warm.append(t_act + t_first)
                act.append(t_act)
                fwd.append(f)
    # every task has now been served: weights loaded lazily (memory-mapped) are resident too
    release_memory()
    mem_n = _memory(device) - mem0
    for i in range(warmup + repeats):
        for a, b in pairs:
            method.activate(model, a)  # serving A ...
            model = method.unload(model, b)  # ... and B is not in the model's memory

            def cold_switch() -> None:
                nonlocal model
                model = method.load(model, artifacts[b], ctx, b)
                model.eval()
                method.activate(model, b)
                forward(b)

            c = timed(cold_switch)
            if i >= warmup:
                cold.append(c)
    w, f, c, a = summarize(warm), summarize(fwd), summarize(cold), summarize(act)
    return {
        "tasks": tasks, "n_tasks": len(tasks), "batch_size": int(next(iter(batches.values())).input_ids.shape[0]),
        "warm_switch": w, "cold_switch": c, "forward": f, "activate": a,
        # the switch itself, timed on its own (a difference of two ~100 ms medians would be noise)
        "warm_switch_cost_s": a["median_s"], "cold_switch_cost_s": c["median_s"] - f["median_s"],
        "serving_mem_bytes": mem_n, "serving_mem_kind": "cuda_allocated" if device.type == "cuda" else "cpu_rss",
        "page_cache": "warm", "model": model,
    }


def switch_groups(records) -> list[list]:
    """Runs that differ only by task (same model, method, config, seed, training), with an
    artifact on disk: each group of >= 2 tasks is one switch measurement."""
    groups: dict[str, list] = {}
    for r in records:
        if r.status != "ok" or not r.run.get("artifact_dir") or not Path(r.run["artifact_dir"]).is_dir():
            continue
        run = r.run
        key = repr((run["model"], run["method"], sorted(run["method_config"].items()),
                    sorted(run["train"].items())))
        groups.setdefault(key, []).append(r)
    return [sorted(g, key=lambda r: r.run["task"]) for g in groups.values() if len({r.run["task"] for r in g}) >= 2]


def measure_group(group, repeats: int = 20, warmup: int = 1, batch_size: int = 4,
                  stream_per_task: int = 32, throughput_repeats: int = 3, throughput_batch: int = 8) -> dict[str, Any]:
    """Switch latency, serving memory and throughput for one group of runs (see ``switch_groups``)."""
    from bench import models
    from bench.distributed import cpu_threads
    from bench.objectives import objective_for
    from bench.registry import METHODS, TASKS, load_builtin_plugins
    from bench.runner import _device, model_context
    from bench.config import TrainConfig, from_dict
    from bench.task import load_splits

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    load_builtin_plugins()
    first = group[0].run
    train = from_dict(TrainConfig, first["train"])
    method_cls = METHODS.get(first["method"])
    method = method_cls(from_dict(method_cls.config_cls, first["method_config"]))
    mspec = models.resolve(first["model"])
    device = _device(train)
    torch.set_num_threads(cpu_threads(train.num_threads))
    tasks = {r.run["task"]: TASKS.get(r.run["task"]) for r in group}
    num_labels = {t.num_labels for t in tasks.values()}
    if len(num_labels) != 1:
        raise ValueError(f"tasks {sorted(tasks)} have different numbers of labels {num_labels}: one head size per model.")
    n_labels = num_labels.pop()
    # the tokenizer only: no model may be loaded before the serving-memory baseline is taken
    ctx = model_context(mspec, next(iter(tasks.values())), models.load_tokenizer(mspec))
    encoded, batches = {}, {}
    for name, task in tasks.items():
        obj = objective_for(mspec.kind, task, ctx.tokenizer, train.max_length)
        test = load_splits(task).get("test")
        rows = test.select(range(min(stream_per_task, len(test))))
        ids = rows.map(obj.encode, batched=True, remove_columns=list(task.input_fields))["input_ids"]
        encoded[name] = [{"input_ids": x} for x in ids]
        enc = ctx.tokenizer.pad(encoded[name][:batch_size], return_tensors="pt")
        batches[name] = Batch(enc["input_ids"].to(device), enc["attention_mask"].to(device))
    artifacts = {r.run["task"]: Path(r.run["artifact_dir"]) for r in group}
    res = measure_switch(method, ctx, lambda: models.load(mspec, n_labels).model,
                         artifacts, batches, device, repeats=repeats, warmup=warmup)
    model = res.pop("model")
    stream = [(t, encoded[t][i]) for i in range(stream_per_task) for t in sorted(encoded) if i < len(encoded[t])]
    res["throughput"] = measure_throughput(method, model, stream, ctx.tokenizer.pad, throughput_batch, device,
                                           repeats=throughput_repeats)
    res["throughput"].update(repeats=throughput_repeats, batch_size=throughput_batch, requests=len(stream))
    res.update({"model": first["model"], "method": first["method"], "method_config": first["method_config"],
                "seed": train.seed, "run_ids": [r.run_id for r in group],
                "artifact_bytes": {r.run["task"]: r.params.get("stored_bytes") for r in group},
                "device": device.type, "repeats": repeats, "warmup": warmup})
    return res


def measure_throughput(method: Method, model: torch.nn.Module, stream: list[tuple[str, dict]], pad,
                       batch_size: int, device: torch.device, repeats: int = 3) -> dict[str, float | None]:
    """Examples/s over ``stream`` (task, encoded example) for (a) mixed batches, (b) batches grouped
    by task with a switch between groups, (c) the same requests all served by one task's artifact
    (same inputs, no switching, no mixing: the baseline); best of ``repeats``."""

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

    def run_mixed() -> None:
        for tasks, ids, mask in batched(stream):
            method.forward_mixed(model, ids, mask, tasks)

    modes = {"single_task": run_single, "grouped": run_grouped, "mixed": run_mixed}
    best = {m: float("inf") for m in modes}
    unsupported = None
    for _ in range(repeats):  # modes interleaved, best of `repeats`: drift hits all modes alike
        for name, fn in modes.items():
            if name == "mixed" and unsupported is not None:
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
    else:
        out["mixed_examples_per_s"] = out["mixed_over_single"] = None
        out["mixed_unsupported"] = unsupported
    return out
