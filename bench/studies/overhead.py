"""``peftbench bench-overhead``: what the harness costs against what users would run instead.

For one model and task and each method, the harness's training does the same work as three
references, each measured side by side with it:

- the plainest hand-written PyTorch + peft loop (``studies.plain_loop``; encoders on single-text
  tasks): whole runs interleaved A B, B A over repeats (model load, data preparation, training,
  saving, evaluation, result writing), and the two training loops in lockstep;
- ``transformers.Trainer`` training the same model on the same batches (``studies.references``),
  in lockstep;
- the harness's own loop in a run process forked as a suite forks it, against the same loop in
  this process (``studies.references``), in lockstep.

Whole runs are tens of seconds apart, and on a shared VM the machine's speed drifts by several
percent between them: the per-step ratio of one pair ranges over 0.93–1.14 here. In lockstep the
two loops advance one optimizer step each, alternately (``references.interleave``), so each
harness step has a reference step on the same batch within a second and a drift cancels out of
their ratio. Printed per method and reference: medians of the per-step median times, the median
over pairs of harness / reference and every pair's ratio, and the losses both sides reached (the
same batches and dropout masks give the same loss: the check that the work was the same).

``--suite`` measures a whole suite instead: ``peftbench run SUITE --no-switch`` in a fresh
process, timed from outside, against the sum of its runs' pure training + evaluation time.
"""

from __future__ import annotations

import dataclasses
import gc
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from peft_bench.core.spec import RunSpec
from peft_bench.studies.plain_loop import PLAIN_METHODS, SAME_WORK, plain_run, plain_setup, plain_steps
from peft_bench.studies.references import against_harness, child_lockstep, same_work

def harness_run(spec: RunSpec, out_dir: Path) -> dict:
    """The harness's own path for one run (``run_local`` without the fork), timed from outside."""
    from peft_bench.execution.local import run_local
    from peft_bench.interface.task import load_splits

    load_splits.cache_clear()  # each run reads its split from disk, as a run in its own process does
    t0 = time.perf_counter()
    rec = run_local([spec], out_dir, isolate=False, log=lambda m: None).records[0]
    wall = time.perf_counter() - t0
    if rec.status != "ok":
        raise RuntimeError(f"harness run {spec.run_id} ended {rec.status}: {rec.error}")
    r = rec.resources
    return {"accuracy": rec.metric("accuracy"), "final_loss": r.final_loss,
            "step_time_median_s": r.step_time_median_s, "train_time_s": r.train_time_s,
            "eval_examples_per_s": r.eval_examples_per_s, "run_wall_s": wall}


def lockstep(spec: RunSpec, split_dir: str, model_path: str, method_cfg, num_labels: int = 2,
             mean_pooling: bool = True) -> dict:
    """The harness's training loop (``engine.loop.train_steps`` on an ``engine.prepare.prepare``d run)
    and the plain loop's, in lockstep (``references.interleave``)."""
    from peft_bench.engine.prepare import prepare
    from peft_bench.interface.task import load_splits

    load_splits.cache_clear()
    run = prepare(spec)
    harness_rng = torch.get_rng_state()
    plain = plain_setup(spec, split_dir, model_path, method_cfg, num_labels, mean_pooling)
    outcome = against_harness(run, plain_steps(plain), harness_rng)
    h, p = outcome.timer.step_times[1:], plain.step_times[1:]  # the first step pays one-off costs
    return {"harness_step_s": statistics.median(h), "reference_step_s": statistics.median(p),
            "harness_loss": statistics.fmean(outcome.losses), "reference_loss": float(torch.stack(plain.losses).mean())}


# (key, reference's name): the lockstep comparisons, in table order
LOCKSTEPS = (("plain", "plain loop"), ("trainer", "transformers.Trainer"), ("isolation", "same loop in-process"))
TARGETS = {"plain": "≤ 1.03", "trainer": "≤ 0.95 (encoders), ≤ 1.00 (causal LMs)", "isolation": "≤ 1.02"}


@dataclass
class Pairs:
    method: str
    harness: list[dict] = dataclasses.field(default_factory=list)  # whole runs (plain loop only)
    plain: list[dict] = dataclasses.field(default_factory=list)
    # lockstep results per reference: {"harness_step_s", "reference_step_s", "harness_loss", "reference_loss"}
    lockstep: dict[str, list[dict]] = dataclasses.field(default_factory=dict)

    def ratio(self, key: str) -> float:
        return statistics.median(h[key] / p[key] for h, p in zip(self.harness, self.plain))

    def ratios(self, ref: str) -> list[float]:
        return [r["harness_step_s"] / r["reference_step_s"] for r in self.lockstep.get(ref, [])]

    def lockstep_ratio(self, ref: str = "plain") -> float:
        return statistics.median(self.ratios(ref))

    def median(self, side: str, key: str) -> float:
        return statistics.median(r[key] for r in getattr(self, side))


def measure(spec_for: dict[str, RunSpec], repeats: int, log=print, references=("plain", "trainer", "isolation")) -> list[Pairs]:
    """Per method: interleaved harness / plain runs (A B, B A, ...) after one warm-up pair, then
    ``repeats`` lockstep runs against each reference (the plain loop only for encoders on
    single-text tasks)."""
    from peft_bench.assets import models
    from peft_bench.engine.prepare import plugins
    from peft_bench.interface.task import load_splits, split_cache_dir

    out = []
    for method, spec in spec_for.items():
        # no reference validates: neither does the harness here (the same work)
        spec = same_work(spec, SAME_WORK.get(method, {}))
        method_obj, task = plugins(spec)
        mspec = models.resolve(spec.model)
        refs = [r for r in references if r != "plain" or (mspec.kind == "encoder" and task.input_fields == ("text",))]
        if not refs:
            raise ValueError(f"the plain loop handles encoder models on single-text tasks; got model {spec.model!r} "
                             f"({mspec.kind}) and task {spec.task!r} ({task.input_fields}): add trainer or isolation.")
        load_splits(task, None)  # builds the on-disk split cache every side reads
        split_dir = str(split_cache_dir(task, None))
        model_path = models.model_dir(mspec)
        pairs = Pairs(method)
        plain_args = (split_dir, model_path, method_obj.config, task.num_labels, mspec.pooling == "mean")
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(repeats + 1 if "plain" in refs else 0):
                # A B, B A, A B, ...: a drift of the machine's speed over time favours neither side
                for side in (("harness", "plain") if i % 2 == 0 else ("plain", "harness")):
                    d = Path(tmp) / f"{side}{i}"
                    gc.collect()
                    res = harness_run(spec, d) if side == "harness" else plain_run(spec, *plain_args[:3], d, *plain_args[3:])
                    shutil.rmtree(d, ignore_errors=True)
                    if i:  # the first pair warms caches (page cache, allocator, lazy imports)
                        getattr(pairs, side).append(res)
                    log(f"  {method} {'warm-up' if not i else f'pair {i}'} {side}: step {res['step_time_median_s'] * 1e3:.1f} ms, "
                        f"eval {res['eval_examples_per_s']:.1f} ex/s, wall {res['run_wall_s']:.2f} s, accuracy {res['accuracy']:.3f}")
        for ref in refs:
            for i in range(1, repeats + 1):
                gc.collect()
                if ref == "plain":
                    res = lockstep(spec, *plain_args)
                else:  # Trainer, or the harness's own loop, in a forked child
                    res = child_lockstep(spec, "trainer" if ref == "trainer" else "harness")
                pairs.lockstep.setdefault(ref, []).append(res)
                log(f"  {method} lockstep with {ref} {i}: harness {res['harness_step_s'] * 1e3:.1f} ms, "
                    f"{ref} {res['reference_step_s'] * 1e3:.1f} ms, ratio {res['harness_step_s'] / res['reference_step_s']:.3f}")
        out.append(pairs)
    return out


def markdown(pairs: list[Pairs], spec: RunSpec, repeats: int) -> str:
    from tabulate import tabulate

    t = spec.train
    ms = lambda v: f"{v * 1e3:.1f} ms"  # noqa: E731
    rows = []
    for p in pairs:
        for ref, name in LOCKSTEPS:
            res = p.lockstep.get(ref)
            if not res:
                continue
            med = lambda k: statistics.median(r[k] for r in res)  # noqa: E731
            rows.append({
                "method": p.method, "measure": "per-step time, in lockstep",
                "harness": ms(med("harness_step_s")) + (" (isolated run)" if ref == "isolation" else ""),
                "reference": f"{name} {ms(med('reference_step_s'))}", "harness / reference": f"{p.lockstep_ratio(ref):.3f}",
                "per pair": " ".join(f"{r:.3f}" for r in p.ratios(ref)), "target": TARGETS[ref],
                "loss (harness / reference)": f"{med('harness_loss'):.4f} / {med('reference_loss'):.4f}"})
        if not p.harness:
            continue
        acc = f"accuracy {p.median('harness', 'accuracy'):.3f} / {p.median('plain', 'accuracy'):.3f}"
        for key, name, fmt, target in (("step_time_median_s", "per-step time, whole runs interleaved", ms, "≤ 1.03"),
                                       ("eval_examples_per_s", "evaluation throughput", lambda v: f"{v:.1f} ex/s", "≥ 0.97"),
                                       ("run_wall_s", "whole-run wall time", lambda v: f"{v:.2f} s", "≤ 1.10")):
            rows.append({"method": p.method, "measure": name, "harness": fmt(p.median("harness", key)),
                         "reference": f"plain loop {fmt(p.median('plain', key))}", "harness / reference": f"{p.ratio(key):.3f}",
                         "per pair": " ".join(f"{h[key] / q[key]:.3f}" for h, q in zip(p.harness, p.plain)),
                         "target": target, "loss (harness / reference)": acc})
    head = (f"{spec.model} × {spec.task}, {t.steps} steps × batch {t.batch_size}, {t.n_train} training / "
            f"{t.n_test} test examples, eval batch {t.eval_batch_size}, max length {t.max_length}, "
            f"{torch.get_num_threads()} threads. In lockstep: {repeats} runs of each pair of training loops advanced "
            f"one step at a time, alternately; for the isolated row, the harness's loop in a forked run process "
            f"against the same loop in this process. Whole runs (plain loop): {repeats} interleaved pairs after one "
            f"warm-up pair, alternating which side runs first. A ratio is the median over pairs of harness / reference; "
            f"the loss is the mean training loss over all steps or, for whole runs, the test accuracy.\n\n")
    return head + tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True) + "\n"


def suite_overhead(suite: str, log=print, sets: list[str] | None = None) -> str:
    """Time ``peftbench run SUITE --no-switch`` in a fresh process against the sum of its runs'
    pure training + evaluation time, and break the difference down.

    Each line the suite prints is timestamped as it arrives (the CLI flushes every line), which
    gives the start-up (until the first run's process runs: the CLI's first ``[1/N]`` line plus
    that run's wait for the run server), the report (last run's outcome line to the ``report:``
    line) and the exit (last line to the end of the process); each run's record gives its own
    phases (``sets``: ``KEY=VALUE`` training settings, passed on as ``--set``). Nothing here runs in
    the timed process."""
    import re

    from tabulate import tabulate

    from peft_bench.core.config import parse_overrides
    from peft_bench.results.store import read_records
    from peft_bench.core.suite import load_suite

    sets = list(sets or [])
    # checked here, before timing: a bad suite or setting is the caller's error, named as such
    name = load_suite(suite, parse_overrides(sets)).name
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "peft_bench.cli", "run", suite, "--no-switch", "--out", tmp,
               *(a for kv in sets for a in ("--set", kv))]
        log("timing: " + " ".join(cmd[2:]))
        lines: list[tuple[float, str]] = []
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip("\n")))
        proc.wait()
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError("the suite failed:\n" + "\n".join(text for _, text in lines[-30:]))
        records = read_records(Path(tmp) / name / "results.jsonl")
    res = [r.resources for r in records]
    total = lambda key: sum(getattr(r, key) or 0.0 for r in res)  # noqa: E731
    pure = total("train_time_s") + total("eval_time_s") + total("val_time_s")  # validation is evaluation work
    at = lambda pattern, last=False: [t for t, text in lines if re.match(pattern, text)][-1 if last else 0]  # noqa: E731
    iso = [r.isolation_overhead_s or 0.0 for r in res]
    in_run = total("run_wall_s") - pure - total("load_time_s") - total("setup_time_s") - total("save_time_s")
    parts = [("start-up: imports until the first run's process runs", at(r"\[1/") + iso[0]),
             ("data + base model loading (sum over runs)", total("load_time_s")),
             ("method set-up: accelerator, wrapping, loaders (sum)", total("setup_time_s")),
             ("artifact saving (sum)", total("save_time_s")),
             ("rest of each run: metrics, record (sum)", in_run),
             ("process isolation after the first run (sum)", sum(iso[1:])),
             ("report with figures", at(r"report: ") - at(r"\s+-> ", last=True)),
             ("exit", wall - lines[-1][0])]
    parts.append(("everything else (between runs, printing)", wall - pure - sum(v for _, v in parts)))
    table = tabulate([{"part of the overhead": name, "seconds": f"{v:.2f}", "share of pure time": f"{v / pure:.2%}"}
                      for name, v in parts], headers="keys", tablefmt="github", disable_numparse=True)
    return (f"`peftbench run {suite} --no-switch` (fresh process, {len(records)} runs): wall {wall:.2f} s; "
            f"sum of pure training + evaluation (test and validation) {pure:.2f} s; **ratio {wall / pure:.3f}** (target ≤ 1.05); "
            f"overhead {wall - pure:.2f} s:\n\n{table}\n")

