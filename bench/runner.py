"""One run: train a method on a task with a model, evaluate on the held-out test split, record.

    spec = RunSpec(model="minilm", task="sentiment", method="lora")
    record = execute(spec, out_dir=Path("results/quick"))

Every method goes through the same loop, optimizer family (AdamW), schedule (linear warm-up and
decay), steps, batch size and seed; only the learning rate is per method (its config). bench/
never branches on the method name: methods differ only through their plugin hooks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import models
from bench.config import TrainConfig, from_dict
from bench.measurement import (MemoryMeter, StepTimer, compute_metrics, count_parameters,
                               current_rss, environment, gc_frozen, majority_baseline, release_memory,
                               stored_size)
from bench.method import Method, ModelContext
from bench.objectives import objective_for
from bench.registry import METHODS, TASKS, load_builtin_plugins
from bench.results import ResultRecord
from bench.task import TaskSpec, load_splits


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class RunSpec:
    model: str
    task: str
    method: str
    method_config: dict[str, Any] = field(default_factory=dict)  # overrides of the method defaults
    train: TrainConfig = field(default_factory=TrainConfig)
    task_source: str | None = None  # hub id or local files instead of the task's own data
    trust_remote_code: bool = False  # only when the suite names this model explicitly
    suite: str = ""

    def resolved(self) -> tuple[Method, TaskSpec]:
        """Validate names and configs before anything heavy is loaded."""
        load_builtin_plugins()
        method_cls = METHODS.get(self.method)
        task = TASKS.get(self.task)
        models.resolve(self.model)
        cfg = from_dict(method_cls.config_cls, self.method_config, where=f"method {self.method!r}")
        return method_cls(cfg), task

    def as_dict(self) -> dict[str, Any]:
        method, _ = self.resolved()
        d = dataclasses.asdict(self)
        d["method_config"] = dataclasses.asdict(method.config)  # the full resolved config
        return d

    @property
    def run_id(self) -> str:
        d = self.as_dict()
        d.pop("suite")  # the same run in two suites is the same run
        blob = json.dumps(d, sort_keys=True).encode()
        return f"{self.model}-{self.task}-{self.method}-s{self.train.seed}-" + hashlib.sha256(blob).hexdigest()[:10]



def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("`device` must be 'auto' or 'cpu' on a machine without CUDA, got 'cuda'.")
    return torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")


def _head_params(model, head_names) -> set[int]:
    return {id(p) for n, m in model.named_modules() if n.split(".")[-1] in head_names for p in m.parameters()}


@dataclass
class Prepared:
    """Everything a run needs after setup: data encoded, base model loaded and prepared."""

    spec: RunSpec
    method: Method
    task: TaskSpec
    ctx: ModelContext
    model: Any
    objective: Any
    accelerator: Any
    device: torch.device
    train_ds: Any
    test_ds: Any
    train_dl: Any
    test_dl: Any
    params: dict[str, int]
    load_time_s: float
    baseline_rss: int


def model_context(mspec, task: TaskSpec, tokenizer, train_texts: list[str] | None = None) -> ModelContext:
    """What a method learns about the model it adapts (the one place that decides the head)."""
    return ModelContext(kind=mspec.kind, tokenizer=tokenizer, task=task,
                        head_names=("classifier",) if mspec.kind == "encoder" else (),
                        reload=lambda p: models.load_model(mspec, p, task.num_labels),
                        train_texts=list(train_texts or []))


def _encode(ds, objective, spec: RunSpec, cols: list[str]):
    """Tokenise in memory. The fingerprint is given, not computed: datasets would otherwise hash
    the objective with its tokenizer (pickled) on every call, which cost 1.8 s per run here; in
    memory nothing is ever read back under it, so it needs no more than to be unique per input."""
    fp = hashlib.sha256(repr((ds._fingerprint, spec.model, spec.train.max_length, type(objective).__qualname__)).encode())
    return ds.map(objective.encode, batched=True, remove_columns=cols, keep_in_memory=True,
                  new_fingerprint=fp.hexdigest()[:16])


def prepare(spec: RunSpec) -> Prepared:
    """Validate the spec, load data and model, let the method make it trainable."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers.utils import logging as hf_logging

    method, task = spec.resolved()  # names and configs are checked before anything heavy loads
    cfg = spec.train
    mspec = dataclasses.replace(models.resolve(spec.model), trust_remote_code=spec.trust_remote_code)
    device = _device(cfg)
    torch.set_num_threads(cfg.num_threads or len(os.sched_getaffinity(0)))
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=cfg.mixed_precision)
    hf_logging.disable_progress_bar()

    t0 = time.perf_counter()
    splits = load_splits(task, spec.task_source)
    train_ds = splits["train"].shuffle(seed=cfg.seed)
    # the run's examples, copied out of the memory-mapped split (reading columns through a
    # shuffled index mapping costs more than the copy)
    train_ds = train_ds.select(range(min(cfg.n_train or len(train_ds), len(train_ds)))).flatten_indices(keep_in_memory=True)
    test_ds = splits["test"].select(range(min(cfg.n_test or len(splits["test"]), len(splits["test"])))).flatten_indices(
        keep_in_memory=True)
    set_seed(cfg.seed)  # new weights created at load (an encoder's classification head) are seeded
    lm = models.load(mspec, task.num_labels)
    objective = objective_for(mspec.kind, task, lm.tokenizer, cfg.max_length)
    cols = list(task.input_fields)
    train_enc = _encode(train_ds, objective, spec, cols)
    # evaluation batches are sorted by length: less padding, same predictions
    test_enc = _encode(test_ds, objective, spec, cols).sort("length", reverse=True, keep_in_memory=True)
    ctx = model_context(mspec, task, lm.tokenizer, train_texts=objective.texts({f: train_ds[f] for f in cols}))
    head_names = ctx.head_names
    load_time = time.perf_counter() - t0
    release_memory()
    baseline_rss = current_rss()  # the post-load baseline both peaks are measured against

    set_seed(cfg.seed)  # the same initialisation of new weights whatever happened above
    model = method.prepare(lm.model, ctx)
    params = count_parameters(method, model, head_names)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_dl = torch.utils.data.DataLoader(train_enc, batch_size=cfg.batch_size, shuffle=True, generator=gen,
                                           collate_fn=lambda f: objective.collate(f, training=True), drop_last=True)
    test_dl = torch.utils.data.DataLoader(test_enc, batch_size=cfg.eval_batch_size, shuffle=False,
                                          collate_fn=lambda f: objective.collate(f, training=False))
    return Prepared(spec=spec, method=method, task=task, ctx=ctx, model=model, objective=objective,
                    accelerator=accelerator, device=device, train_ds=train_ds, test_ds=test_ds,
                    train_dl=train_dl, test_dl=test_dl, params=params, load_time_s=load_time,
                    baseline_rss=baseline_rss)


@dataclass
class TrainOutcome:
    losses: list[float]
    timer: StepTimer
    memory: MemoryMeter


def train(run: Prepared) -> TrainOutcome:
    """The training loop: the same for every method (AdamW, linear schedule, clipping)."""
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    cfg, acc, model, objective = run.spec.train, run.accelerator, run.model, run.objective
    # --- optimizer: AdamW for all; the task head (encoders) trains at `head_lr` for every method --
    head_ids = _head_params(model, run.ctx.head_names)
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in head_ids], "lr": run.method.config.lr},
              {"params": [p for p in trainable if id(p) in head_ids], "lr": cfg.head_lr}]
    groups = [g for g in groups if g["params"]]
    losses: list[torch.Tensor] = []
    with MemoryMeter(run.device, run.baseline_rss) as mem, StepTimer(run.device) as timer:
        if not groups:  # nothing to train (zero-shot baseline)
            return TrainOutcome([], timer, mem)
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * cfg.steps), cfg.steps)
        model, optimizer, train_dl = acc.prepare(model, optimizer, run.train_dl)
        run.model = model
        model.train()
        batches = _cycle(train_dl)
        bar = tqdm(range(cfg.steps), desc=f"train {run.spec.method} {run.spec.task}", leave=False,
                   dynamic_ncols=True, disable=None)
        for step in bar:
            batch = next(batches)
            with acc.autocast():
                loss = objective.loss(model, batch)
            acc.backward(loss)
            if cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            run.method.after_step(model)
            losses.append(loss.detach())
            timer.step(cfg.batch_size)
            if (step + 1) % CHECK_EVERY == 0 or step + 1 == cfg.steps:
                _check_finite(losses, cfg.steps)
                bar.set_postfix(loss=f"{losses[-1].item():.4f}")
        del optimizer, scheduler
    return TrainOutcome([x.item() for x in losses], timer, mem)


CHECK_EVERY = 10  # steps between host syncs of the loss (NaN/inf check, progress bar)


def _check_finite(losses: list[torch.Tensor], steps: int) -> None:
    """Raise ``Diverged`` naming the first step whose loss is NaN/inf among the last CHECK_EVERY.
    One host sync per CHECK_EVERY steps instead of one per step: the device never waits on the
    host in between (a diverged run wastes at most CHECK_EVERY - 1 steps before it stops)."""
    recent = torch.stack(losses[-CHECK_EVERY:]).tolist()
    for i, v in enumerate(recent):
        if not math.isfinite(v):
            raise Diverged(f"loss became {v} at step {len(losses) - len(recent) + i + 1} of {steps}.")


def evaluate(run: Prepared) -> tuple[dict[str, dict], list[int], StepTimer, MemoryMeter]:
    """Metrics on the held-out test split, in inference mode, with its own memory window."""
    from tqdm.auto import tqdm

    model = run.model
    for p in model.parameters():
        p.grad = None
    run.accelerator.free_memory()  # drops accelerate's references to the optimizer and its state
    release_memory()
    model.eval()
    test_dl = run.accelerator.prepare(run.test_dl)
    preds, refs = [], []
    with torch.inference_mode(), MemoryMeter(run.device, run.baseline_rss) as mem, StepTimer(run.device) as ev:
        for batch in tqdm(test_dl, desc=f"eval {run.spec.method} {run.spec.task}", leave=False,
                          dynamic_ncols=True, disable=None):
            with run.accelerator.autocast():
                preds.append(run.objective.predict(model, batch))
            refs.append(batch["labels"])
            ev.step(len(batch["labels"]))
    predictions, references = torch.cat(preds).tolist(), torch.cat(refs).tolist()
    return compute_metrics(run.task.metrics, predictions, references), references, ev, mem


def train_and_evaluate(spec: RunSpec, art_dir: Path) -> ResultRecord:
    started = _now()
    run = prepare(spec)
    out = train(run)
    # the artifact is what a user deploys for this task
    unwrapped = run.accelerator.unwrap_model(run.model)
    if art_dir.exists():
        shutil.rmtree(art_dir)
    art_dir.mkdir(parents=True)
    run.method.save(unwrapped, art_dir)
    stored = stored_size(art_dir)
    metrics, references, ev, mem_eval = evaluate(run)
    losses = out.losses
    return ResultRecord(
        run={**_run_section(spec, started), "n_train": len(run.train_ds), "n_test": len(run.test_ds),
             "artifact_dir": str(art_dir)},
        metrics=metrics,
        params={**run.params, **stored},
        resources={
            "peak_mem_train_bytes": out.memory.peak_bytes, "peak_mem_eval_bytes": mem_eval.peak_bytes,
            "peak_mem_train_reserved_bytes": out.memory.peak_reserved_bytes,
            "peak_mem_eval_reserved_bytes": mem_eval.peak_reserved_bytes,
            "peak_mem_kind": out.memory.kind, "load_time_s": run.load_time_s,
            "train_time_s": out.timer.total_s if losses else 0.0,
            "step_time_median_s": out.timer.median_step_s, "train_examples_per_s": out.timer.examples_per_s,
            "eval_time_s": ev.total_s, "eval_examples_per_s": ev.examples_per_s,
            "train_steps": len(losses),
            "first_loss": sum(losses[:10]) / len(losses[:10]) if losses else None,
            "final_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        },
        baselines=majority_baseline(run.train_ds["label"], references),
        env=environment(run.device),
    )


def _cycle(loader):
    while True:  # a fresh shuffle every epoch (the sampler's generator is seeded)
        yield from loader


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _run_section(spec: RunSpec, started: str | None = None) -> dict[str, Any]:
    return {"run_id": spec.run_id, **spec.as_dict(), "started_at": started or _now(), "finished_at": _now()}


def execute(spec: RunSpec, out_dir: Path) -> ResultRecord:
    """Run one spec; any failure becomes a result record with its status and error tail."""
    art_dir = Path(out_dir) / "artifacts" / spec.run_id
    t0 = time.perf_counter()
    try:
        with gc_frozen():
            record = train_and_evaluate(spec, art_dir)
        record.resources["run_wall_s"] = time.perf_counter() - t0
        return record
    except Exception as e:  # noqa: BLE001 - every failure is a result, not a crash of the suite
        status = "diverged" if isinstance(e, Diverged) else "oom" if _is_oom(e) else "failed"
        tail = "".join(traceback.format_exception(e)).strip().splitlines()[-8:]
        try:
            run = _run_section(spec)
        except Exception:  # noqa: BLE001 - the spec itself is invalid
            run = {"run_id": f"invalid-{abs(hash(repr(spec))) % 10**10}", "model": spec.model,
                   "task": spec.task, "method": spec.method}
        return ResultRecord(run=run, status=status, error="\n".join(tail),
                            resources={"run_wall_s": time.perf_counter() - t0})


def _is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return (isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in text
            or "can't allocate memory" in text or "cannot allocate memory" in text)

