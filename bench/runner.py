"""One run: train a method on a task with a model, evaluate on the held-out test split, record.

    spec = RunSpec(model="minilm", task="sentiment", method="lora")
    record = execute(spec, out_dir=Path("results/quick"))

Every method goes through the same loop, optimizer family (AdamW), schedule (linear warm-up and
decay), steps, batch size and seed; only the learning rate is per method (its config). bench/
never branches on the method name: methods differ only through their plugin hooks.
"""

from __future__ import annotations

import contextlib
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
from typing import Any, Generator

import torch

from bench import models
from bench.artifacts import cache_dir
from bench.config import ConfigError, TrainConfig, from_dict
from bench.distributed import cpu_threads, per_process
from bench.environment import environment
from bench.measurement import (MemoryBaseline, MemoryMeter, StepTimer, compute_metrics, count_parameters,
                               gc_frozen, majority_baseline, release_memory, stored_size)
from bench.method import Method, ModelContext
from bench.objectives import objective_for
from bench.paths import contained, slug
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
        models.resolve(self.model, self.trust_remote_code)
        cfg = from_dict(method_cls.config_cls, self.method_config, where=f"method {self.method!r}")
        return method_cls(cfg), task

    @classmethod
    def from_record(cls, run: dict[str, Any]) -> "RunSpec":
        """The spec of a result record's ``run`` section (configs validated again)."""
        return cls(model=run["model"], task=run["task"], method=run["method"],
                   method_config=dict(run.get("method_config") or {}), train=from_dict(TrainConfig, run["train"]),
                   task_source=run.get("task_source"), trust_remote_code=bool(run.get("trust_remote_code")),
                   suite=run.get("suite", ""))

    def as_dict(self) -> dict[str, Any]:
        from bench.task import data_fingerprint

        method, task = self.resolved()
        d = dataclasses.asdict(self)
        d["method_config"] = dataclasses.asdict(method.config)  # the full resolved config
        d["data"] = data_fingerprint(task, self.task_source)  # edited data -> a new run id
        return d

    @property
    def run_id(self) -> str:
        d = self.as_dict()
        d.pop("suite")  # the same run in two suites is the same run
        for k, default in _ADDED_TRAIN_FIELDS.items():  # ids of earlier result stores stay valid
            if d["train"].get(k) == default:
                d["train"].pop(k)
        blob = json.dumps(d, sort_keys=True).encode()
        # the id names folders (artifacts): a model path or hub id becomes one safe component
        return (f"{slug(self.model)}-{slug(self.task)}-{slug(self.method)}-s{self.train.seed}-"
                + hashlib.sha256(blob).hexdigest()[:10])


# Training settings added after result stores were published, with the value that behaves as before:
# at that value they are left out of the run id, so that ``--resume`` still finds those runs.
_ADDED_TRAIN_FIELDS = {"gradient_accumulation_steps": 1, "gradient_checkpointing": False}


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
    n_train: int
    n_test: int
    train_labels: list[int]
    train_dl: Any
    test_dl: Any
    params: dict[str, int]
    load_time_s: float  # data + base model + tokeniser
    setup_time_s: float  # the rest of ``prepare``: accelerator, the method's wrapping, loaders
    baseline: MemoryBaseline  # the prepared model on its device: both memory windows are above it


def model_context(mspec, task: TaskSpec, tokenizer, train_texts: list[str] | None = None) -> ModelContext:
    """What a method learns about the model it adapts (the one place that decides the head)."""
    return ModelContext(kind=mspec.kind, tokenizer=tokenizer, task=task,
                        head_names=("classifier",) if mspec.kind == "encoder" else (),
                        reload=lambda p: models.load_model(mspec, p, task.num_labels),
                        train_texts=list(train_texts or []))


def _encode(rows: dict[str, list], objective, cols: list[str]) -> list[dict[str, Any]]:
    """Tokenise a run's examples (columns as lists) into one dict per example. Plain lists, not a
    ``datasets.map``: the examples are already in memory, and map's Arrow round trip and
    fingerprinting cost more than the tokenising itself (0.2-1.8 s per run, measured)."""
    enc = objective.encode({f: rows[f] for f in cols})
    return [{"input_ids": ids, "length": n, "label": y} for ids, n, y in zip(enc["input_ids"], enc["length"], rows["label"])]


@dataclass
class RunData:
    """A run's examples: their columns (input fields + label, as lists) and their encodings (the
    test encodings sorted by length, longest first)."""

    train_rows: dict[str, list]
    test_rows: dict[str, list]
    train_enc: list[dict[str, Any]]
    test_enc: list[dict[str, Any]]


DATA_CACHE_VERSION = 1  # bump when what ``run_data`` builds changes shape


def _data_key(spec: RunSpec, task: TaskSpec, model_path: str, objective) -> str | None:
    """What determines a run's encoded examples; None where it cannot be pinned (a hub model id)."""
    import inspect

    from bench.task import files_stamp, split_cache_dir

    if not Path(model_path).is_dir():
        return None
    cfg = spec.train
    code = inspect.getsource(type(objective))  # editing the objective's code invalidates the cache
    blob = repr((DATA_CACHE_VERSION, split_cache_dir(task, spec.task_source).name, task.input_fields,
                 task.template, task.label_words, task.target_prefix, str(Path(model_path).resolve()),
                 files_stamp(model_path), type(objective).__qualname__, hashlib.sha256(code.encode()).hexdigest(), cfg.max_length,
                 cfg.seed, cfg.n_train, cfg.n_test))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_data(spec: RunSpec, task: TaskSpec, model_path: str, objective) -> RunData:
    """The run's training examples (its seeded shuffle of the train split, first ``n_train``) and
    test examples (the first ``n_test``), tokenised by ``objective`` (the tokenizer of the model
    loaded from ``model_path``).

    Kept on disk per (tokenizer files, task and source, objective code, max_length, seed, n_train,
    n_test) as JSON: the runs of a suite that share a model and task (every method, every grid
    point) read their examples back instead of selecting and tokenising again. Written to a
    temporary file and renamed into place (concurrent shards write the same bytes). Nothing here
    is method-specific, so every method trains on exactly the same encodings."""
    cfg, cols = spec.train, list(task.input_fields)
    key = _data_key(spec, task, model_path, objective)
    path = cache_dir() / "encoded" / f"{slug(spec.model)}-{slug(task.name)}-{key}.json" if key else None
    if path is not None and path.is_file():
        try:
            return RunData(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):  # unreadable: build it again below
            pass
    splits = load_splits(task, spec.task_source)
    train_ds = splits["train"].shuffle(seed=cfg.seed)
    # the run's examples, copied out of the memory-mapped split (reading columns through a
    # shuffled index mapping costs more than the copy)
    train_ds = train_ds.select(range(min(cfg.n_train or len(train_ds), len(train_ds)))).flatten_indices(keep_in_memory=True)
    test_ds = splits["test"].select(range(min(cfg.n_test or len(splits["test"]), len(splits["test"])))).flatten_indices(
        keep_in_memory=True)
    train_rows, test_rows = train_ds[:], test_ds[:]  # columns as Python lists, converted once
    data = RunData(train_rows=train_rows, test_rows=test_rows, train_enc=_encode(train_rows, objective, cols),
                   # evaluation batches are sorted by length (stable): less padding, same predictions
                   test_enc=sorted(_encode(test_rows, objective, cols), key=lambda r: -r["length"]))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(dataclasses.asdict(data)))
        os.replace(tmp, path)
    return data


def prepare(spec: RunSpec) -> Prepared:
    """Validate the spec, load data and model, let the method make it trainable."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed
    from transformers.utils import logging as hf_logging

    started = time.perf_counter()
    method, task = spec.resolved()  # names and configs are checked before anything heavy loads
    cfg = spec.train
    mspec = dataclasses.replace(models.resolve(spec.model, spec.trust_remote_code),
                                trust_remote_code=spec.trust_remote_code)
    device = _device(cfg)
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
    ctx = model_context(mspec, task, lm.tokenizer, train_texts=objective.texts({f: data.train_rows[f] for f in cols}))
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
    test_dl = torch.utils.data.DataLoader(data.test_enc, batch_size=cfg.eval_batch_size, shuffle=False,
                                          collate_fn=lambda f: objective.collate(f, training=False))
    return Prepared(spec=spec, method=method, task=task, ctx=ctx, model=model, objective=objective,
                    accelerator=accelerator, device=device, n_train=len(data.train_enc),
                    n_test=len(data.test_enc), train_labels=data.train_rows["label"],
                    train_dl=train_dl, test_dl=test_dl, params=params, load_time_s=load_time,
                    setup_time_s=time.perf_counter() - started - load_time, baseline=baseline)


@dataclass
class TrainOutcome:
    losses: list[float]
    timer: StepTimer
    memory: MemoryMeter


def train(run: Prepared) -> TrainOutcome:
    """The training loop: the same for every method (AdamW, linear schedule, clipping).

    One step = ``gradient_accumulation_steps`` micro-batches (gradients synchronised across
    processes only on the last one), then one optimizer step. The recorded loss of a step is the
    mean over its examples on all processes.
    """
    return run_to_end(train_steps(run))


def run_to_end(steps: Generator):
    """Advance a step generator to its end; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def train_steps(run: Prepared) -> Generator[int, None, TrainOutcome]:
    """``train`` one optimizer step at a time: yields each step's index after the step, returns the
    ``TrainOutcome``. Time spent away from the generator is not counted in any step (the overhead
    benchmark interleaves the harness's steps with a plain loop's, one by one)."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    cfg, acc, model, objective = run.spec.train, run.accelerator, run.model, run.objective
    accum = cfg.gradient_accumulation_steps
    # --- optimizer: AdamW for all; the task head (encoders) trains at `head_lr` for every method --
    head_ids = _head_params(model, run.ctx.head_names)
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in head_ids], "lr": run.method.config.lr},
              {"params": [p for p in trainable if id(p) in head_ids], "lr": cfg.head_lr}]
    groups = [g for g in groups if g["params"]]
    local: list[torch.Tensor] = []  # this process's step losses, not yet averaged over processes
    losses: list[float] = []
    with MemoryMeter(run.device, run.baseline) as mem, StepTimer(run.device) as timer:
        if not groups:  # nothing to train (zero-shot baseline)
            return TrainOutcome([], timer, mem)
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * cfg.steps), cfg.steps)
        model, optimizer, train_dl = acc.prepare(model, optimizer, run.train_dl)
        run.model = model
        if acc.num_processes > 1:  # DDP made the weights equal; dropout masks differ per process
            set_seed(cfg.seed, device_specific=True)  # (seed + process index: unchanged for one)
        model.train()
        batches = _cycle(train_dl)
        bar = tqdm(range(cfg.steps), desc=f"train {run.spec.method} {run.spec.task}", leave=False,
                   dynamic_ncols=True, disable=None if acc.is_local_main_process else True)
        for step in bar:
            step_loss = None
            for micro in range(accum):
                batch = next(batches)
                # DDP: no gradient all-reduce until the step's last micro-batch
                with contextlib.nullcontext() if micro == accum - 1 else acc.no_sync(model):
                    with acc.autocast():
                        loss = objective.loss(model, batch) / accum
                    acc.backward(loss)
                step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
            if cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            run.method.after_step(model)
            local.append(step_loss)
            timer.step(cfg.batch_size)
            yield step
            timer.resume()  # the clock restarts: what the caller did between two steps is not this loop's
            if (step + 1) % CHECK_EVERY == 0 or step + 1 == cfg.steps:
                # one host sync (and one all-reduce) per CHECK_EVERY steps, not one per step
                block = acc.reduce(torch.stack(local), "mean") if acc.num_processes > 1 else torch.stack(local)
                losses.extend(block.tolist())
                local.clear()
                _check_finite(losses, cfg.steps)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
        del optimizer, scheduler
    return TrainOutcome(losses, timer, mem)


CHECK_EVERY = 10  # steps between host syncs of the loss (NaN/inf check, progress bar)


def _check_finite(losses: list[float], steps: int) -> None:
    """Raise ``Diverged`` naming the first step whose loss is NaN/inf. The losses are averaged over
    processes first, so every process of a launch stops at the same step (none is left waiting
    in a collective). A diverged run wastes at most CHECK_EVERY - 1 steps before it stops."""
    window = losses[-CHECK_EVERY:]
    for i, v in enumerate(window):
        if not math.isfinite(v):
            raise Diverged(f"loss became {v} at step {len(losses) - len(window) + i + 1} of {steps}.")


def evaluate(run: Prepared) -> tuple[dict[str, dict], list[int], StepTimer, MemoryMeter]:
    """Metrics on the held-out test split, in inference mode, with its own memory window. Under a
    launch each process predicts its slice of every batch and the predictions are gathered (padding
    duplicates dropped): the metrics are over the whole test split, on every process."""
    from tqdm.auto import tqdm

    acc = run.accelerator
    model = acc.unwrap_model(run.model)  # evaluation needs no DDP wrapper (no gradients to sync)
    for p in model.parameters():
        p.grad = None
    acc.free_memory()  # drops accelerate's references to the optimizer and its state
    release_memory()
    model.eval()
    test_dl = acc.prepare(run.test_dl)
    preds, refs = [], []
    with torch.inference_mode(), MemoryMeter(run.device, run.baseline) as mem, StepTimer(run.device) as ev:
        for batch in tqdm(test_dl, desc=f"eval {run.spec.method} {run.spec.task}", leave=False,
                          dynamic_ncols=True, disable=None if acc.is_local_main_process else True):
            with acc.autocast():
                pred = run.objective.predict(model, batch)
            pred, ref = acc.gather_for_metrics((pred, batch["labels"]))
            preds.append(pred)
            refs.append(ref)
            ev.step(len(ref))
    predictions, references = torch.cat(preds).tolist(), torch.cat(refs).tolist()
    return compute_metrics(run.task.metrics, predictions, references), references, ev, mem


def train_and_evaluate(spec: RunSpec, art_dir: Path) -> ResultRecord:
    started = _now()
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
    metrics, references, ev, mem_eval = evaluate(run)
    losses = out.losses
    # memory: the peak of each process (one per device), and their max as the run's figure
    train_peaks, eval_peaks = per_process(acc, out.memory.peak_bytes), per_process(acc, mem_eval.peak_bytes)
    train_res = per_process(acc, out.memory.peak_reserved_bytes)
    eval_res = per_process(acc, mem_eval.peak_reserved_bytes)
    peak = lambda xs: None if xs[0] is None else int(max(xs))  # noqa: E731
    return ResultRecord(
        run={**_run_section(spec, started), "n_train": run.n_train, "n_test": run.n_test,
             "artifact_dir": str(art_dir)},
        metrics=metrics,
        params={**run.params, **stored},
        resources={
            "peak_mem_train_bytes": peak(train_peaks), "peak_mem_eval_bytes": peak(eval_peaks),
            "peak_mem_train_reserved_bytes": peak(train_res), "peak_mem_eval_reserved_bytes": peak(eval_res),
            "peak_mem_train_per_process_bytes": [int(x) for x in train_peaks],
            "peak_mem_eval_per_process_bytes": [int(x) for x in eval_peaks],
            "peak_mem_kind": out.memory.kind, **run.baseline.as_resources(), "load_time_s": run.load_time_s, "setup_time_s": run.setup_time_s,
            "save_time_s": save_time,
            "train_time_s": out.timer.total_s if losses else 0.0,
            "step_time_median_s": out.timer.median_step_s, "train_examples_per_s": out.timer.examples_per_s,
            "eval_time_s": ev.total_s, "eval_examples_per_s": ev.examples_per_s,
            "train_steps": len(losses),
            "first_loss": sum(losses[:10]) / len(losses[:10]) if losses else None,
            "final_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        },
        baselines=majority_baseline(run.train_labels, references),
        env={**environment(run.device), "processes": acc.num_processes,
             "distributed_type": str(acc.distributed_type).split(".")[-1]},
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


def _cycle(loader):
    while True:  # a fresh shuffle every epoch (the sampler's generator is seeded)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:  # never spin on a loader that yields nothing
            raise RuntimeError("the training loader yields no batch (fewer examples than one batch).")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _run_section(spec: RunSpec, started: str | None = None) -> dict[str, Any]:
    return {"run_id": spec.run_id, **spec.as_dict(), "started_at": started or _now(), "finished_at": _now()}


def execute(spec: RunSpec, out_dir: Path) -> ResultRecord:
    """Run one spec; any failure becomes a result record with its status and error tail."""
    t0 = time.perf_counter()
    try:
        art_dir = contained(Path(out_dir) / "artifacts" / spec.run_id, out_dir, "the artifact folder")
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
            run = {"run_id": "invalid-" + hashlib.sha256(repr(spec).encode()).hexdigest()[:10], "model": spec.model,
                   "task": spec.task, "method": spec.method}
        return ResultRecord(run=run, status=status, error="\n".join(tail),
                            resources={"run_wall_s": time.perf_counter() - t0})


def _is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return (isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in text
            or "can't allocate memory" in text or "cannot allocate memory" in text)

