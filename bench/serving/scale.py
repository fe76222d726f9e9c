"""Serving at scale: N task artifacts on one frozen base model, requests from N tasks.

The workloads of S-LoRA and Punica: a stream of requests whose tasks are drawn uniformly or with
Zipf (alpha = 1) popularity over the N loaded tasks. For each N (1, 4, 16, 64 by default) and
each popularity law, ``switching.measure_throughput`` serves the same stream three ways: mixed
batches (each row by its own task's artifact, one forward), batches grouped by task with a
switch between groups, and every request by one artifact (the baseline). Beside them: the
latency of each batch (p50 / p90; a request waits for its batch), memory per task (the growth
of resident memory and of live tensor bytes from the smallest N; it should be about one
artifact's weights), the Python objects one load keeps, and the cold load time of each artifact.

The artifacts are the method's own initialisation with its trainable weights perturbed per task
(seeded noise), saved and loaded like trained ones: serving cost does not depend on what the
weights learned, and the report says so.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from peft_bench.engine.measurement import release_memory
from peft_bench.results.units import fmt_bytes
from peft_bench.serving.switching import _memory, measure_throughput, summarize

NS = (1, 4, 16, 64)
LAWS = ("uniform", "zipf")


def task_stream(n_tasks: int, examples: list[dict], law: str, requests: int, seed: int = 0) -> list[tuple[str, dict]]:
    """``requests`` (task, example) pairs: tasks drawn uniformly or Zipf(1) (task k with weight 1/k),
    seeded; examples taken in order, cycling."""
    if law not in LAWS:
        raise ValueError(f"unknown popularity law {law!r}; valid: {', '.join(LAWS)}.")
    weights = np.ones(n_tasks) if law == "uniform" else 1.0 / np.arange(1, n_tasks + 1)
    tasks = np.random.default_rng(seed).choice(n_tasks, size=requests, p=weights / weights.sum())
    return [(f"t{int(t):02d}", examples[i % len(examples)]) for i, t in enumerate(tasks)]


def batch_latencies(method, model, stream, pad, batch_size: int, device, mixed: bool) -> list[float]:
    """Seconds per batch of ``stream`` served mixed (one forward) or grouped by task (a switch and a
    forward per task in the batch)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(stream), batch_size):
            chunk = stream[i:i + batch_size]
            enc = pad([{"input_ids": f["input_ids"]} for _, f in chunk], return_tensors="pt")
            ids, mask, tasks = enc["input_ids"].to(device), enc["attention_mask"].to(device), [t for t, _ in chunk]
            t0 = time.perf_counter()
            if mixed:
                method.forward_mixed(model, ids, mask, tasks)
            else:
                for t in dict.fromkeys(tasks):
                    method.activate(model, t)
                    rows = torch.tensor([j for j, x in enumerate(tasks) if x == t])
                    model(input_ids=ids[rows], attention_mask=mask[rows])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            out.append(time.perf_counter() - t0)
    return out


def save_artifacts(run, start: dict, indices: range, folder: Path, seed: int = 0) -> list[tuple[Path, int]]:
    """Artifacts ``indices`` of ``run``'s method: its trainable weights as they were at ``start``
    plus seeded noise (artifact i always the same), saved; (folder, bytes on disk) of each."""
    out = []
    for i in indices:
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        with torch.no_grad():
            for k, p in run.model.named_parameters():
                if k in start:
                    p.copy_(start[k] + 0.1 * torch.randn(p.shape, generator=gen).to(p.dtype))
        path = folder / f"t{i:02d}"
        path.mkdir(parents=True, exist_ok=True)
        run.method.save(run.model, path)
        out.append((path, sum(f.stat().st_size for f in path.rglob("*") if f.is_file())))
    return out


def tensor_bytes_in(path: Path) -> int:
    """Bytes of the tensors an artifact's safetensors files hold (its weights, without the config,
    model card and file headers beside them on disk)."""
    from safetensors.torch import load_file

    return sum(t.nbytes for f in sorted(Path(path).rglob("*.safetensors")) for t in load_file(str(f)).values())


def live_tensor_bytes(device: torch.device) -> int:
    """Bytes of every distinct tensor storage on ``device`` that Python can reach, each counted
    once: what the loaded artifacts (and any banks built from them) hold as tensors, counted
    independently of the methods (the garbage collector's view of the process)."""
    seen: dict[tuple[int, int], int] = {}
    with warnings.catch_warnings():  # (isinstance on some module proxies warns of deprecations)
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor) and obj.device.type == device.type and not obj.is_meta:
                st = obj.untyped_storage()
                seen[(st.data_ptr(), st.nbytes())] = st.nbytes()
    return sum(seen.values())


def memory_state(device: torch.device) -> dict[str, int]:
    """Resident memory (CUDA: allocated) and live tensor bytes, after releasing what is free."""
    release_memory()
    return {"resident": _memory(device), "tensors": live_tensor_bytes(device)}


def python_bytes_of_load(method, model, path: Path, ctx, name: str, other: str) -> tuple[torch.nn.Module, int]:
    """Unload ``name`` (while ``other`` serves, as between requests) and load it again from ``path``
    with Python's allocator traced: the bytes of Python objects (modules, dicts, configs) one
    artifact keeps alive. Tensor storage is not on Python's allocator, so it is not in this figure."""
    model = method.activate(model, other)
    model = method.unload(model, name)
    release_memory()
    tracemalloc.start()
    try:
        model = method.load(model, path, ctx, name).eval()
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return model, kept


def scale_study(run, load_base: Callable[[], torch.nn.Module], folder: Path, ns=NS, laws=LAWS,
                requests: int = 256, batch_size: int = 16, repeats: int = 3, budget_bytes: float = 8 * 2**30,
                log=print) -> list[dict]:
    """One row per (N, law) for ``run``'s method (a prepared run: its method, context and test
    examples); ``load_base`` loads a fresh base model. N values whose artifacts would exceed
    ``budget_bytes`` on disk together are left out (full fine-tuning stores a whole model per task).

    Memory: resident memory and live tensor bytes are taken after each N's streams were served
    (banks built, transients released); memory per task is their growth from the smallest N,
    divided by the tasks added, beside the bytes of the artifact's weights."""
    method, device, pad = run.method, run.device, run.ctx.tokenizer.pad
    examples = [{"input_ids": e["input_ids"]} for e in run.test_examples]
    start = {k: p.detach().clone() for k, p in run.model.named_parameters() if p.requires_grad}
    artifacts = save_artifacts(run, start, range(1), Path(folder))
    asked, ns = sorted(ns), [n for n in sorted(ns) if n * artifacts[0][1] <= budget_bytes] or [min(ns)]
    if ns != asked:
        log(f"    N in {ns} of {asked}: {fmt_bytes(artifacts[0][1])} per artifact, budget {fmt_bytes(budget_bytes)} on disk")
    artifacts += save_artifacts(run, start, range(1, max(ns)), Path(folder))
    del start
    weights = tensor_bytes_in(artifacts[0][0])
    run.model = None  # the prepared model leaves before the serving baseline is taken
    served = load_base().to(device).eval()
    cold, loaded, rows, first = [], 0, [], None
    for n in ns:
        while loaded < n:
            t0 = time.perf_counter()
            served = method.load(served, artifacts[loaded][0], run.ctx, f"t{loaded:02d}").eval()
            cold.append(time.perf_counter() - t0)
            loaded += 1
        at_n = []
        for law in laws:
            stream = task_stream(n, examples, law, requests)
            tp = measure_throughput(method, served, stream, pad, batch_size, device, repeats=repeats)
            mixed = tp["mixed_examples_per_s"] is not None
            lat = summarize(batch_latencies(method, served, stream, pad, batch_size, device, mixed))
            at_n.append({"n_tasks": n, "law": law, "requests": requests, "batch_size": batch_size,
                         "distinct_tasks": len({t for t, _ in stream}), **tp,
                         "grouped_over_single": tp["grouped_examples_per_s"] / tp["single_task_examples_per_s"],
                         "latency_path": "mixed" if mixed else "grouped", "latency_p50_s": lat["median_s"],
                         "latency_p90_s": lat["p90_s"], "artifact_bytes": artifacts[0][1], "artifact_tensor_bytes": weights,
                         "cold_load_median_s": float(np.median(cold)), "cold_load_p90_s": summarize(cold)["p90_s"]})
        mem = memory_state(device)
        first = first or (n, mem)
        added = n - first[0]
        for r in at_n:
            r.update(memory_kind="cuda_allocated" if device.type == "cuda" else "cpu_rss",
                     resident_bytes=mem["resident"], tensor_bytes=mem["tensors"],
                     resident_per_task_bytes=(mem["resident"] - first[1]["resident"]) / added if added else None,
                     tensor_per_task_bytes=(mem["tensors"] - first[1]["tensors"]) / added if added else None)
            per_task = f"  memory per task {fmt_bytes(r['resident_per_task_bytes'])} (tensors " \
                       f"{fmt_bytes(r['tensor_per_task_bytes'])})" if added else ""
            log(f"    N={n:<3} {r['law']:<8} mixed/one {r['mixed_over_single'] or float('nan'):.3f}  grouped/one "
                f"{r['grouped_over_single']:.3f}{per_task}")
        rows += at_n
    python_bytes = None
    if loaded > 1:
        served, python_bytes = python_bytes_of_load(method, served, artifacts[loaded - 1][0], run.ctx,
                                                    f"t{loaded - 1:02d}", "t00")
    for r in rows:
        r["python_bytes_per_load"] = python_bytes
    return rows
