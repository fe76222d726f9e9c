"""The result record: every key of every section, typed and documented in one place.

One record per run, one JSON line in ``results.jsonl`` (``results.store``). Every writer builds the
typed sections below (an unknown key is a ``TypeError``) and every reader reads their attributes;
a number stays a number, a value not known is ``null``.

Versions: 1 wrote only the keys a run produced (a failed run: ``run`` and ``error``); 2 writes
every declared key of every section, ``null`` where unknown; 3 adds validation metrics,
learning curves (``curves``), the per-example predictions file (``run.predictions``) and how a
configuration was selected (``run.search``); 4 adds training throughput (tokens/s, model FLOPs and
their share of the device's peak); 5 (this one) adds forgetting (causal LMs). All are read; a key this
version does not declare (a record from another writer) is kept in the section's ``extra`` and
written back unchanged, so that merging stores never loses a value.

Task-switch measurements (``switch.jsonl``, ``serving.switching``) are separate lines with their
own ``SWITCH_SCHEMA_VERSION``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

SCHEMA_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
# switch.jsonl lines; 2: switches timed without a forward, first output beside
SWITCH_SCHEMA_VERSION = 2

Status = Literal["ok", "failed", "diverged", "oom", "timeout", "killed"]
STATUSES: tuple[str, ...] = get_args(Status)


@dataclass(kw_only=True)
class Section:
    """A record section: declared keys as attributes, plus ``extra`` for undeclared ones read."""

    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None):
        d = dict(d or {})
        names = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: d.pop(k) for k in list(d) if k in names}, extra=d)

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}, **self.extra}

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "extra"]

    def __bool__(self) -> bool:  # a section is empty when nothing in it is known (a failed run's)
        return bool(self.extra) or any(getattr(self, k) not in (None, {}, [], "") for k in self.keys())


@dataclass(kw_only=True)
class RunInfo(Section):
    """What ran, with what, when (``core.spec.RunSpec.as_dict`` plus the run's own facts)."""

    run_id: str = ""  # ``RunSpec.run_id``: model-task-method-s<seed>-<hash of everything else>
    model: str | None = None  # registry name, hub id or local path
    task: str | None = None
    method: str | None = None
    method_config: dict[str, Any] = field(default_factory=dict)  # the method's full config (defaults included)
    train: dict[str, Any] | None = None  # ``core.config.TrainConfig`` fields (seed included)
    task_source: str | None = None  # hub id or local path replacing the task's own data
    task_def: dict[str, Any] | None = None  # a task declared in the suite file (``interface.task_table``)
    trust_remote_code: bool = False
    suite: str = ""  # the suite that ran it (not part of the run id)
    data: dict[str, Any] | None = None  # ``interface.task.data_fingerprint``: kind, sha256, task_version
    started_at: str | None = None  # ISO 8601 with offset
    finished_at: str | None = None
    n_train: int | None = None  # training examples the run drew from
    n_test: int | None = None  # test examples it was scored on
    n_validation: int | None = None  # validation examples it was selected on (0: none evaluated)
    artifact_dir: str | None = None  # the saved adapter / weights (what a user deploys)
    # per-example predictions (``results.predictions``), relative to the store's folder
    predictions: str | None = None
    # the hyperparameter search this run is a trial of (``core.suite``): {"space": {field: [values]},
    # "trial": {field: value}, "objective": "validation <metric>"}; null: configured by hand
    search: dict[str, Any] | None = None


@dataclass(kw_only=True)
class Metric(Section):
    """One test-split metric (``engine.measurement.compute_metrics``)."""

    value: float
    stderr: float | None = None  # binomial standard error over test examples (accuracy); null otherwise
    higher_is_better: bool = True


@dataclass(kw_only=True)
class Params(Section):
    """Parameter counts (``engine.measurement.count_parameters`` and ``stored_size``)."""

    total_params: int | None = None  # every parameter of the prepared model (base + method)
    trainable_params: int | None = None  # requires_grad (peft's own count for peft models), head included
    trainable_head_params: int | None = None  # the trainable part of the task head (encoders)
    stored_params: int | None = None  # tensor elements in the artifact's safetensors files
    stored_bytes: int | None = None  # bytes on disk of the artifact folder


@dataclass(kw_only=True)
class Resources(Section):
    """Memory (bytes, above one baseline: see ``engine.measurement``), time (seconds), throughput."""

    peak_mem_train_bytes: int | None = None  # max over processes of the training window's peak
    peak_mem_eval_bytes: int | None = None  # the same for the evaluation window
    peak_mem_train_reserved_bytes: int | None = None  # CUDA: the caching allocator's reserved peak
    peak_mem_eval_reserved_bytes: int | None = None
    peak_mem_train_per_process_bytes: list[int] | None = None  # one per process of a launch
    peak_mem_eval_per_process_bytes: list[int] | None = None
    peak_mem_kind: str | None = None  # cpu_rss_peak, cpu_rss_sampled or cuda_allocated (``results.report``)
    mem_baseline_bytes: int | None = None  # the baseline: prepared model on its device, weights resident
    mem_baseline_reserved_bytes: int | None = None  # CUDA
    mem_baseline_rss_anon_bytes: int | None = None  # CPU: anonymous part (heap, tensors)
    mem_baseline_rss_file_bytes: int | None = None  # CPU: file-backed part (memory-mapped weights)
    load_time_s: float | None = None  # data + base model + tokenizer
    setup_time_s: float | None = None  # the rest of ``prepare``: accelerator, the method's wrapping, loaders
    save_time_s: float | None = None  # writing the artifact
    train_time_s: float | None = None  # the training loop's steps
    step_time_median_s: float | None = None  # median optimizer step (device-synchronised)
    train_examples_per_s: float | None = None  # global rate over all processes
    eval_time_s: float | None = None
    eval_examples_per_s: float | None = None
    val_time_s: float | None = None  # validation evaluations during training (not in train_time_s)
    train_steps: int | None = None  # optimizer steps taken
    train_tokens: int | None = None  # real (unpadded) input tokens of all training steps, all processes
    train_positions: int | None = None  # positions the body processed: rows x (padded length + virtual tokens)
    tokens_per_s: float | None = None  # train_tokens / train_time_s
    train_flops: float | None = None  # model FLOPs of training, estimated (``engine.throughput``)
    flops_per_s: float | None = None  # train_flops / train_time_s
    peak_flops_per_s: float | None = None  # the devices' peak in the run's precision (all processes)
    peak_flops_source: str | None = None  # "data sheet: ..." or "measured: ..."
    mfu: float | None = None  # flops_per_s / peak_flops_per_s (model FLOPs utilisation)
    first_loss: float | None = None  # mean of the first 10 steps' losses
    final_loss: float | None = None  # mean of the last 10
    # causal LMs (``engine.forgetting``): loss on a fixed general-text sample, nats per token
    general_loss_base: float | None = None  # the base model's, before the method touched it
    general_loss_adapted: float | None = None  # with the trained adapter / weights
    forgetting: float | None = None  # adapted - base: positive = worse at general text
    forgetting_time_s: float | None = None  # both measurements (not in load, setup or train time)
    run_wall_s: float | None = None  # the run in its process, start to record
    isolated_wall_s: float | None = None  # the run's child process, fork to hand-back
    isolation_overhead_s: float | None = None  # isolated_wall_s - run_wall_s
    executor: str | None = None  # "ray" for a Ray task; null: the local executor


@dataclass(kw_only=True)
class Curves(Section):
    """Learning curves (``engine.loop``), bounded in size whatever the number of steps."""

    train_loss: list[list[float]] | None = None  # [step, mean loss of the steps since the previous point]
    validation: list[dict[str, float]] | None = None  # {"step": s, metric: value, ...} per evaluation point


@dataclass(kw_only=True)
class Baselines(Section):
    """What a model that learned nothing scores (``engine.measurement.majority_baseline``)."""

    majority_class: int | str | None = None  # the most frequent training answer (class, choice position or text)
    majority_accuracy: float | None = None  # test accuracy of always predicting it
    majority_val_accuracy: float | None = None  # the same on the validation examples


@dataclass(kw_only=True)
class Env(Section):
    """Where it ran (``core.environment.environment``)."""

    packages: dict[str, str] | None = None  # versions of torch, transformers, peft, ...
    lock: dict[str, Any] | None = None  # file, sha256, matches, mismatches (against requirements.lock)
    python: str | None = None
    device: str | None = None  # cpu or cuda
    device_name: str | None = None
    torch_threads: int | None = None
    cpu_count: int | None = None
    hostname: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    processes: int | None = None  # processes of the launch (1 without one)
    distributed_type: str | None = None  # accelerate's: NO, MULTI_GPU, MULTI_CPU, ...


_SECTION_TYPES = {"run": RunInfo, "params": Params, "resources": Resources, "curves": Curves,
                  "baselines": Baselines, "env": Env}


@dataclass
class ResultRecord:
    run: RunInfo
    status: Status = "ok"
    error: str | None = None  # the last lines of the traceback (or why the run has no result)
    metrics: dict[str, Metric] = field(default_factory=dict)  # on the test split
    validation: dict[str, Metric] = field(default_factory=dict)  # on the validation examples, after the last step
    params: Params = field(default_factory=Params)
    resources: Resources = field(default_factory=Resources)
    curves: Curves = field(default_factory=Curves)
    baselines: Baselines = field(default_factory=Baselines)
    env: Env = field(default_factory=Env)
    schema_version: int = SCHEMA_VERSION
    # where the record was read from (its store's folder; not written): predictions resolve from it
    origin: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:  # a section given as a dict must hold declared keys only
        for name, cls in _SECTION_TYPES.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, cls(**value))
        self.metrics = {k: Metric(**m) if isinstance(m, dict) else m for k, m in self.metrics.items()}
        self.validation = {k: Metric(**m) if isinstance(m, dict) else m for k, m in self.validation.items()}

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def metric(self, name: str) -> float | None:
        m = self.metrics.get(name)
        return None if m is None else m.value

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run.to_dict(), "status": self.status, "error": self.error,
                "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
                "validation": {k: m.to_dict() for k, m in self.validation.items()}, "params": self.params.to_dict(),
                "resources": self.resources.to_dict(), "curves": self.curves.to_dict(),
                "baselines": self.baselines.to_dict(), "env": self.env.to_dict(), "schema_version": SCHEMA_VERSION}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ResultRecord":
        """A record of any readable version (``record_problem(d)`` must be None)."""
        return cls(run=RunInfo.from_dict(d["run"]), status=d.get("status", "ok"), error=d.get("error"),
                   metrics={k: Metric.from_dict(m) for k, m in (d.get("metrics") or {}).items()},
                   validation={k: Metric.from_dict(m) for k, m in (d.get("validation") or {}).items()},
                   **{s: t.from_dict(d.get(s)) for s, t in _SECTION_TYPES.items() if s != "run"},
                   schema_version=d.get("schema_version", SCHEMA_VERSION))


_TOP = {f.name for f in dataclasses.fields(ResultRecord)} - {"origin"}


def record_problem(d: object) -> str | None:
    """Why a parsed line is not a record this version can read (None when it is one)."""
    if not isinstance(d, dict):
        return f"not a JSON object but {type(d).__name__}"
    version = d.get("schema_version")
    if version not in READABLE_VERSIONS:
        return f"schema_version {version!r}, this peft-bench reads {', '.join(map(str, READABLE_VERSIONS))}"
    unknown = sorted(set(d) - _TOP)
    if unknown:
        return f"unknown section(s) {unknown}"
    run = d.get("run")
    if not isinstance(run, dict) or not isinstance(run.get("run_id"), str) or not run["run_id"]:
        return "no run.run_id"
    if d.get("status", "ok") not in STATUSES:
        return f"status {d.get('status')!r} is not one of {', '.join(STATUSES)}"
    metrics = d.get("metrics") or {}
    if not isinstance(metrics, dict) or not all(isinstance(m, dict) and isinstance(m.get("value"), (int, float))
                                                for m in metrics.values()):
        return "metrics are not {name: {value: number, ...}}"
    if d.get("status", "ok") == "ok" and not metrics:
        return "status ok but no metrics"
    if not isinstance(d.get("validation") or {}, dict):
        return "`validation` is not an object"
    for sec in ("params", "resources", "curves", "baselines", "env"):
        if not isinstance(d.get(sec) or {}, dict):
            return f"`{sec}` is not an object"
    return None
