"""Setting a run up (``prepare`` -> ``Prepared``): data encoded, base model loaded, the method's
wrapping applied, loaders built, and the one memory baseline both memory windows are above."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch

from peft_bench.assets import models
from peft_bench.core.config import ConfigError, TrainConfig, from_dict
from peft_bench.core.registry import METHODS, load_builtin_plugins
from peft_bench.core.spec import RunSpec
from peft_bench.engine.data import run_data
from peft_bench.engine.distributed import cpu_threads
from peft_bench.engine.forgetting import Forgetting
from peft_bench.engine.measurement import MemoryBaseline, count_parameters, release_memory
from peft_bench.engine.objectives import objective_for
from peft_bench.interface.method import Method, ModelContext
from peft_bench.interface.task import TaskSpec
from peft_bench.interface.task_table import task_for


def plugins(spec: RunSpec) -> tuple[Method, TaskSpec]:
    """The configured method and the task of a spec (resolved first: names and configs checked)."""
    spec = spec.resolve()
    load_builtin_plugins()
    method_cls = METHODS.get(spec.method)
    return method_cls(from_dict(method_cls.config_cls, spec.resolved_config, where=f"method {spec.method!r}")), \
        task_for(spec.task, spec.task_def)


def device_for(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("`device` must be 'auto' or 'cpu' on a machine without CUDA, got 'cuda'.")
    return torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")


def head_params(model, head_names) -> set[int]:
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
    n_train: int
    n_test: int
    train_labels: list[int]
    train_dl: Any
    test_dl: Any
    val_dl: Any  # None when the run evaluates no validation examples (eval_points = 0)
    test_ids: list[str]  # ``interface.task.example_id`` of each test example, in test_dl's order
    val_ids: list[str]
    test_examples: list[dict]  # the encodings test_dl / val_dl batch, in order (ids and gold answers)
    val_examples: list[dict]
    params: dict[str, int]
    load_time_s: float  # data + base model + tokeniser
    setup_time_s: float  # the rest of ``prepare``: accelerator, the method's wrapping, loaders
    baseline: MemoryBaseline  # the prepared model on its device: both memory windows are above it
    forgetting: Any = None  # causal LMs: ``engine.forgetting.Forgetting``, the base model's loss taken


def model_context(mspec, task: TaskSpec, tokenizer, train_texts: list[str] | None = None,
                  train_steps: int = 0) -> ModelContext:
    """What a method learns about the model it adapts (the one place that decides the head)."""
    return ModelContext(kind=mspec.kind, tokenizer=tokenizer, task=task,
                        head_names=("classifier",) if mspec.kind == "encoder" else (),
                        reload=lambda p: models.load_model(mspec, p, task.num_labels),
                        train_texts=list(train_texts or []), train_steps=train_steps)

def prepare(spec: RunSpec) -> Prepared:
    """Validate the spec, load data and model, let the method make it trainable."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed
    from transformers.utils import logging as hf_logging

    started = time.perf_counter()
    spec = spec.resolve()  # names and configs are checked before anything heavy loads
    method, task = plugins(spec)
    cfg = spec.train
    mspec = dataclasses.replace(models.resolve(spec.model, spec.trust_remote_code),
                                trust_remote_code=spec.trust_remote_code)
    device = device_for(cfg)
    if cfg.mixed_precision == "fp16" and device.type != "cuda":
        raise ConfigError("`mixed_precision` 'fp16' needs a CUDA device; on CPU use 'bf16' or 'no'.")
    # a run's precision is its own; the process group of a launch (PartialState) is kept
    AcceleratorState._reset_state()
    # split_batches: the loaders' batches are global, each process gets its 1/P slice of them
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=cfg.mixed_precision,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    device = accelerator.device
    procs, accum = accelerator.num_processes, cfg.gradient_accumulation_steps
    micro_batch = cfg.batch_size // accum  # global micro-batch: split over the processes
    if micro_batch % procs:
        raise ConfigError(f"`batch_size` must be divisible by gradient_accumulation_steps x processes "
                          f"({accum} x {procs}), got {cfg.batch_size}.")
    if cfg.eval_batch_size % procs:
        raise ConfigError(f"`eval_batch_size` must be divisible by the number of processes ({procs}), "
                          f"got {cfg.eval_batch_size}.")
    torch.set_num_threads(cpu_threads(cfg.num_threads))
    hf_logging.disable_progress_bar()

    t0 = time.perf_counter()
    set_seed(cfg.seed)  # new weights created at load (an encoder's classification head) are seeded
    lm = models.load(mspec, task.num_labels)
    objective = objective_for(mspec.kind, task, lm.tokenizer, cfg.max_length)
    data = run_data(spec, task, lm.path, objective)
    cols = list(task.input_fields)
    ctx = model_context(mspec, task, lm.tokenizer, train_texts=objective.texts({f: data.train_rows[f] for f in cols}),
                        train_steps=cfg.steps)
    head_names = ctx.head_names
    load_time = time.perf_counter() - t0

    if cfg.gradient_checkpointing:
        if not getattr(lm.model, "supports_gradient_checkpointing", False):
            raise ConfigError(f"`gradient_checkpointing` is not supported by {type(lm.model).__name__} ({spec.model}).")
        # non-reentrant: works with frozen inputs (prompt methods, adapters) without input grads
        kwargs = {"use_reentrant": False}
        if hasattr(lm.model, "activation_checkpointing_enable"):  # the name since transformers 5.x
            lm.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            lm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    # causal LMs: the base model's loss on general text, before the method touches it (not in
    # load or setup time: its own time is recorded)
    t_forget = time.perf_counter()
    forgetting = Forgetting(lm.model, lm.tokenizer, device) if mspec.kind == "causal" else None
    t_forget = time.perf_counter() - t_forget
    set_seed(cfg.seed)  # the same initialisation of new weights whatever happened above
    model = method.prepare(lm.model, ctx).to(device)
    params = count_parameters(method, model, head_names)
    if len(data.train_enc) < micro_batch:  # drop_last would leave no batch: the loop could never step
        raise ConfigError(f"`batch_size` must be at most the number of training examples: task {task.name!r} "
                          f"has {len(data.train_enc)} here, and a step takes {micro_batch} per micro-batch "
                          f"(batch_size {cfg.batch_size}); lower `batch_size` or raise `n_train`.")
    release_memory()
    # ONE baseline for both windows, with the model already on its device (CUDA) and every base
    # weight resident (CPU: ``models.load_model`` paged the memory-mapped weights in)
    baseline = MemoryBaseline.take(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_dl = torch.utils.data.DataLoader(data.train_enc, batch_size=micro_batch, shuffle=True, generator=gen,
                                           collate_fn=lambda f: objective.collate(f, training=True), drop_last=True)
    eval_loader = lambda enc: torch.utils.data.DataLoader(  # noqa: E731
        enc, batch_size=cfg.eval_batch_size, shuffle=False, collate_fn=lambda f: objective.collate(f, training=False))
    test_dl = eval_loader(data.test_enc)
    val_dl = eval_loader(data.val_enc) if cfg.eval_points and data.val_enc else None
    return Prepared(spec=spec, method=method, task=task, ctx=ctx, model=model, objective=objective,
                    accelerator=accelerator, device=device, n_train=len(data.train_enc),
                    n_test=len(data.test_enc), train_labels=[objective.gold(y) for y in data.train_rows["label"]],
                    train_dl=train_dl, test_dl=test_dl, val_dl=val_dl, test_ids=[e["id"] for e in data.test_enc],
                    val_ids=[e["id"] for e in data.val_enc] if val_dl is not None else [], params=params, load_time_s=load_time,
                    test_examples=data.test_enc, val_examples=data.val_enc if val_dl is not None else [],
                    setup_time_s=time.perf_counter() - started - load_time - t_forget, baseline=baseline,
                    forgetting=forgetting)

