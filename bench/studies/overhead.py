"""``peftbench bench-overhead``: what the harness costs on top of the training it measures.

For one model and task and each method, the same work runs through (a) the harness
(``peft_bench.execution.local.run_local``, in this process, exactly what a suite runs minus the fork) and (b)
``plain_run``: the plainest hand-written PyTorch + peft loop, interleaved A B A B over repeats.
Both read the same cached split from disk, draw the same examples and batches (the same seeded
shuffle), build the same network, train it with the same AdamW, schedule and clipping for the same
steps, save the adapter, evaluate the same test examples and write one JSON line. Pairs alternate
which side runs first. Printed per method: medians over repeats of the per-step median time, the
evaluation throughput and the whole-run wall time (model load, data preparation, training, saving,
evaluation, result writing), and the median over pairs of the harness/plain ratio.

Whole runs are tens of seconds apart, and on a shared VM the machine's speed drifts by several
percent between them: the per-step ratio of one pair ranges over 0.93–1.14 here. So the per-step
time is also measured with the two training loops in lockstep (``lockstep``): the harness's own
loop (``engine.loop.train_steps``, the generator ``engine.loop.train`` drains) and the plain loop advance one
step each, alternately, so each harness step has a plain step on the same batch within a second.

``--suite`` measures a whole suite instead: ``peftbench run SUITE --no-switch`` in a fresh
process, timed from outside, against the sum of its runs' pure training + evaluation time.

Only the network definition is shared: ``peft_bench.assets.models.use_mean_pooling`` (the same model must be
trained for the comparison to mean anything). Everything else on the plain path is written here.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import torch

from peft_bench.engine.distributed import cpu_threads  # the same thread count as the harness: a setting, not code on the timed path
from peft_bench.core.spec import RunSpec

PLAIN_METHODS = ("lora", "prompt_tuning")
# method settings the harness side runs with, so that both sides do the same work: the plain loop
# starts a soft prompt as the prompt_tuning plugin's `init = "random"` does (uniform(-0.5, 0.5)
# after peft's own init), not from class-label embeddings (method work the plain loop does not
# do). With the same init both sides reach the same loss, which the tests check.
SAME_WORK = {"prompt_tuning": {"init": "random"}}


def _peft_config(method: str, cfg) -> object:
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType

    if method == "lora":
        return LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout)
    if method == "prompt_tuning":  # the plugin's init = "random" (see SAME_WORK)
        return PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=cfg.num_virtual_tokens,
                                  prompt_tuning_init=PromptTuningInit.RANDOM)
    raise ValueError(f"`method` must be one of {', '.join(PLAIN_METHODS)} for the plain loop, got {method!r}.")


def plain_setup(spec: RunSpec, split_dir: str, model_path: str, method_cfg, num_labels: int = 2,
                mean_pooling: bool = True) -> SimpleNamespace:
    """The plain loop up to its first step: data, model, optimizer (written without the harness)."""
    import datasets
    from peft import get_peft_model
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer,
                              get_linear_schedule_with_warmup, set_seed)
    from transformers.utils import logging as hf_logging

    from peft_bench.assets.models import use_mean_pooling

    t0 = time.perf_counter()
    hf_logging.set_verbosity_error()  # the new classifier's "missing weights" report is expected
    cfg = spec.train
    torch.set_num_threads(cpu_threads(cfg.num_threads))
    splits = datasets.load_from_disk(split_dir)
    train = splits["train"].shuffle(seed=cfg.seed).select(range(min(cfg.n_train, len(splits["train"]))))
    test = splits["test"].select(range(min(cfg.n_test, len(splits["test"]))))
    tok = AutoTokenizer.from_pretrained(model_path)
    set_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels,
                                                               use_safetensors=True)
    if mean_pooling:
        use_mean_pooling(model)
    train_ids = tok(list(train["text"]), truncation=True, max_length=cfg.max_length)["input_ids"]
    test_ids = tok(list(test["text"]), truncation=True, max_length=cfg.max_length)["input_ids"]
    set_seed(cfg.seed)
    model = get_peft_model(model, _peft_config(spec.method, method_cfg))
    if spec.method == "prompt_tuning":
        with torch.no_grad():
            model.prompt_encoder["default"].embedding.weight.uniform_(-0.5, 0.5)
    head = [p for n, p in model.named_parameters() if p.requires_grad and "classifier" in n]
    body = [p for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n]
    opt = torch.optim.AdamW([{"params": body, "lr": method_cfg.lr}, {"params": head, "lr": cfg.head_lr}],
                            weight_decay=cfg.weight_decay)
    order = torch.utils.data.DataLoader(range(len(train_ids)), batch_size=cfg.batch_size, shuffle=True,
                                        generator=torch.Generator().manual_seed(cfg.seed), drop_last=True,
                                        collate_fn=lambda idx: idx)
    return SimpleNamespace(t0=t0, cfg=cfg, tok=tok, model=model, params=body + head, opt=opt,
                           sched=get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * cfg.steps), cfg.steps),
                           order=order, train_ids=train_ids, train_labels=list(train["label"]),
                           test_ids=test_ids, test_labels=list(test["label"]), step_times=[], losses=[])


def _collate(p: SimpleNamespace, idx, ids, labels):
    batch = p.tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"], torch.tensor([labels[i] for i in idx])


def plain_steps(p: SimpleNamespace) -> Iterator[int]:
    """The plain training loop, one step at a time (each step timed on its own)."""
    cfg, model = p.cfg, p.model
    model.train()
    it = iter(p.order)
    for step in range(cfg.steps):
        s = time.perf_counter()
        try:
            idx = next(it)
        except StopIteration:
            it = iter(p.order)
            idx = next(it)
        input_ids, mask, labels = _collate(p, idx, p.train_ids, p.train_labels)
        loss = torch.nn.functional.cross_entropy(model(input_ids=input_ids, attention_mask=mask).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(p.params, cfg.max_grad_norm)
        p.opt.step()
        p.sched.step()
        p.opt.zero_grad(set_to_none=True)
        p.losses.append(loss.detach())
        p.step_times.append(time.perf_counter() - s)
        yield step


def plain_finish(p: SimpleNamespace, out_dir: Path) -> dict:
    """Save the adapter, evaluate, write one JSON line."""
    cfg, model = p.cfg, p.model
    model.save_pretrained(Path(out_dir) / "plain_artifact")
    model.eval()
    e0 = time.perf_counter()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(p.test_ids), cfg.eval_batch_size):
            idx = range(i, min(i + cfg.eval_batch_size, len(p.test_ids)))
            input_ids, mask, labels = _collate(p, idx, p.test_ids, p.test_labels)
            correct += (model(input_ids=input_ids, attention_mask=mask).logits.argmax(-1) == labels).sum().item()
    eval_s = time.perf_counter() - e0
    result = {"accuracy": correct / len(p.test_ids), "final_loss": float(torch.stack(p.losses[-10:]).mean()),
              "step_time_median_s": statistics.median(p.step_times[1:]), "train_time_s": sum(p.step_times),
              "eval_examples_per_s": len(p.test_ids) / eval_s}
    with open(Path(out_dir) / "plain.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    result["run_wall_s"] = time.perf_counter() - p.t0
    return result


def plain_run(spec: RunSpec, split_dir: str, model_path: str, method_cfg, out_dir: Path, num_labels: int = 2,
              mean_pooling: bool = True) -> dict:
    """A minimal training + evaluation loop, written without the harness (see the module doc)."""
    p = plain_setup(spec, split_dir, model_path, method_cfg, num_labels, mean_pooling)
    for _ in plain_steps(p):
        pass
    return plain_finish(p, out_dir)


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
    """The harness's training loop (``engine.loop.train_steps`` on an ``engine.prepare.prepare``d run) and the plain
    loop's, advanced one optimizer step at a time, alternately (H P, P H, ...): consecutive steps of
    the two sides are a fraction of a second apart, so a drift of the machine's speed, which moves
    whole runs by several percent on a shared VM, cancels out of their ratio. Each side keeps its
    own CPU random-number state (swapped between steps, outside the timed steps), so each draws the
    dropout masks it would draw alone, and both still reach the same loss."""
    from peft_bench.engine.prepare import prepare
    from peft_bench.engine.loop import run_to_end, train_steps
    from peft_bench.interface.task import load_splits

    load_splits.cache_clear()
    run = prepare(spec)
    sides = {"harness": [train_steps(run), torch.get_rng_state()]}
    plain = plain_setup(spec, split_dir, model_path, method_cfg, num_labels, mean_pooling)
    sides["plain"] = [plain_steps(plain), torch.get_rng_state()]

    def advance(side: str, to_end: bool = False):
        steps, rng = sides[side]
        torch.set_rng_state(rng)
        out = run_to_end(steps) if to_end else next(steps)
        sides[side][1] = torch.get_rng_state()
        return out

    for k in range(spec.train.steps):
        for side in (("harness", "plain") if k % 2 == 0 else ("plain", "harness")):
            advance(side)
    outcome = advance("harness", to_end=True)  # its last check of the losses
    advance("plain", to_end=True)
    h, p = outcome.timer.step_times[1:], plain.step_times[1:]  # the first step pays one-off costs
    return {"harness_step_s": statistics.median(h), "plain_step_s": statistics.median(p),
            "harness_final_loss": statistics.fmean(outcome.losses[-10:]),
            "plain_final_loss": float(torch.stack(plain.losses[-10:]).mean())}


@dataclass
class Pairs:
    method: str
    harness: list[dict]
    plain: list[dict]
    lockstep: list[dict] = dataclasses.field(default_factory=list)

    def ratio(self, key: str) -> float:
        return statistics.median(h[key] / p[key] for h, p in zip(self.harness, self.plain))

    def lockstep_ratio(self) -> float:
        return statistics.median(r["harness_step_s"] / r["plain_step_s"] for r in self.lockstep)

    def median(self, side: str, key: str) -> float:
        return statistics.median(r[key] for r in getattr(self, side))


def measure(spec_for: dict[str, RunSpec], repeats: int, log=print) -> list[Pairs]:
    """Per method: interleaved harness / plain runs (A B, B A, ...) after one warm-up pair, then
    ``repeats`` runs of the two training loops in lockstep (``lockstep``)."""
    from peft_bench.assets import models
    from peft_bench.core.registry import TASKS
    from peft_bench.engine.prepare import plugins
    from peft_bench.interface.task import load_splits, split_cache_dir

    out = []
    for method, spec in spec_for.items():
        # the plain loop validates nothing: neither does the harness side here (the same work)
        spec = dataclasses.replace(spec, method_config={**spec.method_config, **SAME_WORK.get(method, {})},
                                   train=dataclasses.replace(spec.train, eval_points=0),
                                   resolved_config=None, data=None).resolve()
        method_obj, task = plugins(spec)
        mspec = models.resolve(spec.model)
        if mspec.kind != "encoder" or task.input_fields != ("text",):
            raise ValueError(f"the plain loop handles encoder models on single-text tasks; got model "
                             f"{spec.model!r} ({mspec.kind}) and task {spec.task!r} ({TASKS.get(spec.task).input_fields}).")
        load_splits(task, None)  # builds the on-disk split cache both sides read
        split_dir = str(split_cache_dir(task, None))
        model_path = models.model_dir(mspec)
        pairs = Pairs(method, [], [])
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(repeats + 1):
                # A B, B A, A B, ...: a drift of the machine's speed over time favours neither side
                for side in (("harness", "plain") if i % 2 == 0 else ("plain", "harness")):
                    d = Path(tmp) / f"{side}{i}"
                    gc.collect()
                    res = (harness_run(spec, d) if side == "harness"
                           else plain_run(spec, split_dir, model_path, method_obj.config, d, task.num_labels,
                                          mspec.pooling == "mean"))
                    shutil.rmtree(d, ignore_errors=True)
                    if i:  # the first pair warms caches (page cache, allocator, lazy imports)
                        getattr(pairs, side).append(res)
                    log(f"  {method} {'warm-up' if not i else f'pair {i}'} {side}: step {res['step_time_median_s'] * 1e3:.1f} ms, "
                        f"eval {res['eval_examples_per_s']:.1f} ex/s, wall {res['run_wall_s']:.2f} s, accuracy {res['accuracy']:.3f}")
            for i in range(1, repeats + 1):
                gc.collect()
                res = lockstep(spec, split_dir, model_path, method_obj.config, task.num_labels, mspec.pooling == "mean")
                pairs.lockstep.append(res)
                log(f"  {method} steps interleaved {i}: harness {res['harness_step_s'] * 1e3:.1f} ms, "
                    f"plain {res['plain_step_s'] * 1e3:.1f} ms, ratio {res['harness_step_s'] / res['plain_step_s']:.3f}")
        out.append(pairs)
    return out


def markdown(pairs: list[Pairs], spec: RunSpec, repeats: int) -> str:
    from tabulate import tabulate

    t = spec.train
    ms = lambda v: f"{v * 1e3:.1f} ms"  # noqa: E731
    rows = []
    for p in pairs:
        if p.lockstep:
            med = lambda k: statistics.median(r[k] for r in p.lockstep)  # noqa: E731
            rows.append({
                "method": p.method, "measure": "per-step time, steps interleaved", "harness": ms(med("harness_step_s")),
                "plain loop": ms(med("plain_step_s")), "harness / plain": f"{p.lockstep_ratio():.3f}", "target": "≤ 1.03",
                "result (harness / plain)": f"final loss {med('harness_final_loss'):.4f} / {med('plain_final_loss'):.4f}"})
        acc = f"accuracy {p.median('harness', 'accuracy'):.3f} / {p.median('plain', 'accuracy'):.3f}"
        for key, name, fmt, target in (("step_time_median_s", "per-step time, whole runs interleaved", ms, "≤ 1.03"),
                                       ("eval_examples_per_s", "evaluation throughput", lambda v: f"{v:.1f} ex/s", "≥ 0.97"),
                                       ("run_wall_s", "whole-run wall time", lambda v: f"{v:.2f} s", "≤ 1.10")):
            rows.append({"method": p.method, "measure": name, "harness": fmt(p.median("harness", key)),
                         "plain loop": fmt(p.median("plain", key)), "harness / plain": f"{p.ratio(key):.3f}",
                         "target": target, "result (harness / plain)": acc})
    head = (f"{spec.model} × {spec.task}, {t.steps} steps × batch {t.batch_size}, {t.n_train} training / "
            f"{t.n_test} test examples, eval batch {t.eval_batch_size}, max length {t.max_length}, "
            f"{torch.get_num_threads()} threads. Whole runs: {repeats} interleaved pairs (after one warm-up pair), "
            f"alternating which side runs first. Steps interleaved: {repeats} runs of each side's training loop "
            f"advanced one step at a time, alternately. Each ratio is the median over pairs of harness / plain.\n\n")
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

