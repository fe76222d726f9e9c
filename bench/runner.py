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
                               current_rss, environment, majority_baseline, release_memory,
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


def train_and_evaluate(spec: RunSpec, art_dir: Path) -> ResultRecord:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup
    from transformers.utils import logging as hf_logging

    # --- setup: validate, then load data and model ----------------------------------------------
    method, task = spec.resolved()
    cfg = spec.train
    mspec = models.resolve(spec.model)
    device = _device(cfg)
    threads = cfg.num_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=cfg.mixed_precision)
    hf_logging.disable_progress_bar()
    set_seed(cfg.seed)

    t0 = time.perf_counter()
    splits = load_splits(task, spec.task_source)
    train_ds = splits["train"].shuffle(seed=cfg.seed)
    train_ds = train_ds.select(range(min(cfg.n_train or len(train_ds), len(train_ds))))
    test_ds = splits["test"].select(range(min(cfg.n_test or len(splits["test"]), len(splits["test"]))))
    lm = models.load(mspec, task.num_labels)
    objective = objective_for(mspec.kind, task, lm.tokenizer, cfg.max_length)
    cols = list(task.input_fields)
    train_enc = train_ds.map(objective.encode, batched=True, remove_columns=cols)
    test_enc = test_ds.map(objective.encode, batched=True, remove_columns=cols).sort("length", reverse=True)
    head_names = ("classifier",) if mspec.kind == "encoder" else ()
    ctx = ModelContext(kind=mspec.kind, tokenizer=lm.tokenizer, task=task, head_names=head_names,
                       reload=lambda p: models.load(dataclasses.replace(mspec, source=p), task.num_labels).model,
                       train_texts=objective.texts({f: train_ds[f] for f in cols}))
    load_time = time.perf_counter() - t0
    release_memory()
    baseline_rss = current_rss()  # the post-load baseline both peaks are measured against

    set_seed(cfg.seed)  # the same initialisation of new weights whatever happened above
    model = method.prepare(lm.model, ctx)
    params = count_parameters(method, model, head_names)

    # --- optimizer: AdamW for all; the task head (encoders) trains at `head_lr` for every method --
    head_ids = _head_params(model, head_names)
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in head_ids], "lr": method.config.lr},
              {"params": [p for p in trainable if id(p) in head_ids], "lr": cfg.head_lr}]
    groups = [g for g in groups if g["params"]]
    do_train = bool(trainable)
    optimizer = torch.optim.AdamW(groups or [torch.zeros(1, requires_grad=True)], weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * cfg.steps), cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_dl = torch.utils.data.DataLoader(train_enc, batch_size=cfg.batch_size, shuffle=True, generator=gen,
                                           collate_fn=lambda f: objective.collate(f, training=True), drop_last=True)
    test_dl = torch.utils.data.DataLoader(test_enc, batch_size=cfg.eval_batch_size, shuffle=False,
                                          collate_fn=lambda f: objective.collate(f, training=False))
    model, optimizer, train_dl, test_dl = accelerator.prepare(model, optimizer, train_dl, test_dl)

    # --- train ------------------------------------------------------------------------------------
    losses: list[torch.Tensor] = []
    model.train()
    with MemoryMeter(device, baseline_rss) as mem_train, StepTimer(device) as timer:
        if do_train:
            batches = _cycle(train_dl)
            bar = tqdm(range(cfg.steps), desc=f"train {spec.method} {spec.task}", leave=False, dynamic_ncols=True)
            for step in bar:
                batch = next(batches)
                with accelerator.autocast():
                    loss = objective.loss(model, batch)
                # NaN/inf is caught within the step it appears (one host sync: cheap next to a step)
                if not torch.isfinite(loss):
                    raise Diverged(f"loss became {loss.item()} at step {step + 1} of {cfg.steps}.")
                accelerator.backward(loss)
                if cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                method.after_step(model)
                losses.append(loss.detach())
                timer.step(cfg.batch_size)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{loss.item():.4f}")
    final_loss = torch.stack(losses[-10:]).mean().item() if losses else None

    # --- save the artifact (what a user would deploy for this task) -------------------------------
    unwrapped = accelerator.unwrap_model(model)
    if art_dir.exists():
        shutil.rmtree(art_dir)
    art_dir.mkdir(parents=True)
    method.save(unwrapped, art_dir)
    stored = stored_size(art_dir)

    # --- evaluate on the held-out test split -------------------------------------------------------
    del optimizer, scheduler, losses
    for p in unwrapped.parameters():
        p.grad = None
    release_memory()
    model.eval()
    preds, refs = [], []
    with torch.inference_mode(), MemoryMeter(device, baseline_rss) as mem_eval, StepTimer(device) as ev:
        for batch in tqdm(test_dl, desc=f"eval {spec.method} {spec.task}", leave=False, dynamic_ncols=True):
            with accelerator.autocast():
                preds.append(objective.predict(model, batch))
            refs.append(batch["labels"])
            ev.step(len(batch["labels"]))
    predictions, references = torch.cat(preds).tolist(), torch.cat(refs).tolist()
    metrics = compute_metrics(task.metrics, predictions, references)

    return ResultRecord(
        run={**_run_section(spec), "n_train": len(train_ds), "n_test": len(test_ds)},
        metrics=metrics,
        params={**params, **stored},
        resources={
            "peak_mem_train_bytes": mem_train.peak_bytes, "peak_mem_eval_bytes": mem_eval.peak_bytes,
            "peak_mem_train_reserved_bytes": mem_train.peak_reserved_bytes,
            "peak_mem_eval_reserved_bytes": mem_eval.peak_reserved_bytes,
            "peak_mem_kind": mem_train.kind,
            "load_time_s": load_time, "train_time_s": timer.total_s if do_train else 0.0,
            "step_time_median_s": timer.median_step_s, "train_examples_per_s": timer.examples_per_s,
            "eval_time_s": ev.total_s, "eval_examples_per_s": ev.examples_per_s,
            "train_steps": len(timer.step_times), "final_loss": final_loss,
        },
        baselines=majority_baseline(train_ds["label"], references),
        env=environment(device),
    )


def _cycle(loader):
    while True:  # a fresh shuffle every epoch (the sampler's generator is seeded)
        yield from loader


def _run_section(spec: RunSpec) -> dict[str, Any]:
    return {"run_id": spec.run_id, **spec.as_dict(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def execute(spec: RunSpec, out_dir: Path) -> ResultRecord:
    """Run one spec; any failure becomes a result record with its status and error tail."""
    art_dir = Path(out_dir) / "artifacts" / spec.run_id
    try:
        return train_and_evaluate(spec, art_dir)
    except Exception as e:  # noqa: BLE001 - every failure is a result, not a crash of the suite
        status = "diverged" if isinstance(e, Diverged) else "oom" if _is_oom(e) else "failed"
        tail = "".join(traceback.format_exception(e)).strip().splitlines()[-8:]
        try:
            run = _run_section(spec)
        except Exception:  # noqa: BLE001 - the spec itself is invalid
            run = {"run_id": f"invalid-{abs(hash(repr(spec))) % 10**10}", "model": spec.model,
                   "task": spec.task, "method": spec.method}
        return ResultRecord(run=run, status=status, error="\n".join(tail))


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(e).lower()

