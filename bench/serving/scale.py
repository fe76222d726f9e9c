"""Serving at scale: N task artifacts on one frozen base model, requests from N tasks.

The workloads of S-LoRA and Punica: a stream of requests whose tasks are drawn uniformly or with
Zipf (alpha = 1) popularity over the N loaded tasks. For each N (1, 4, 16, 64 by default) and
each popularity law, ``switching.measure_throughput`` serves the same stream three ways: mixed
batches (each row by its own task's artifact, one forward), batches grouped by task with a
switch between groups, and every request by one artifact (the baseline). Beside them: the
latency of each batch (p50 / p90; a request waits for its batch), resident memory above the
base model as tasks are loaded (it should grow by about one artifact per task), and the cold
load time of each artifact.

The artifacts are the method's own initialisation with its trainable weights perturbed per task
(seeded noise), saved and loaded like trained ones: serving cost does not depend on what the
weights learned, and the report says so.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

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


def save_artifacts(run, n: int, folder: Path, seed: int = 0) -> list[tuple[Path, int]]:
    """``n`` artifacts of ``run``'s method: its trainable weights plus seeded noise, saved; (folder,
    bytes on disk) of each."""
    out = []
    start = {k: p.detach().clone() for k, p in run.model.named_parameters() if p.requires_grad}
    for i in range(n):
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


def scale_study(run, load_base: Callable[[], torch.nn.Module], folder: Path, ns=NS, laws=LAWS,
                requests: int = 256, batch_size: int = 16, repeats: int = 3, log=print) -> list[dict]:
    """One row per (N, law) for ``run``'s method (a prepared run: its method, context and test
    examples); ``load_base`` loads a fresh base model."""
    method, device, pad = run.method, run.device, run.ctx.tokenizer.pad
    examples = [{"input_ids": e["input_ids"]} for e in run.test_examples]
    artifacts = save_artifacts(run, max(ns), Path(folder))
    run.model = None  # the prepared model leaves before the serving baseline is taken
    served = load_base().to(device).eval()
    base_mem = _memory(device)
    cold, mem_at, loaded, rows = [], {}, 0, []
    for n in sorted(ns):
        while loaded < n:
            t0 = time.perf_counter()
            served = method.load(served, artifacts[loaded][0], run.ctx, f"t{loaded:02d}").eval()
            cold.append(time.perf_counter() - t0)
            loaded += 1
        mem_at[n] = _memory(device) - base_mem
        for law in laws:
            stream = task_stream(n, examples, law, requests)
            tp = measure_throughput(method, served, stream, pad, batch_size, device, repeats=repeats)
            mixed = tp["mixed_examples_per_s"] is not None
            lat = summarize(batch_latencies(method, served, stream, pad, batch_size, device, mixed))
            rows.append({"n_tasks": n, "law": law, "requests": requests, "batch_size": batch_size,
                         "distinct_tasks": len({t for t, _ in stream}), **tp,
                         "grouped_over_single": tp["grouped_examples_per_s"] / tp["single_task_examples_per_s"],
                         "latency_path": "mixed" if mixed else "grouped", "latency_p50_s": lat["median_s"],
                         "latency_p90_s": lat["p90_s"], "memory_above_base_bytes": mem_at[n],
                         "artifact_bytes": artifacts[0][1], "cold_load_median_s": float(np.median(cold)),
                         "cold_load_p90_s": summarize(cold)["p90_s"]})
            log(f"    N={n:<3} {law:<8} mixed/one {tp['mixed_over_single'] or float('nan'):.3f}  grouped/one "
                f"{rows[-1]['grouped_over_single']:.3f}  memory +{mem_at[n] / 2**20:.1f} MiB")
    return rows

