"""What one run is, as data: ``RunSpec``, and its ``run_id``.

A spec names a model, a task and a method with its config, the training settings and the data
source. ``resolve()`` checks the names against the registries and fills in what the id is made
of: the method's full config (defaults included) and the data's fingerprint. After that the spec
is pure data: its ``run_id`` is a hash of its fields, computed without loading a plugin or a
model, and the same in every process.

    spec = RunSpec(model="minilm", task="sentiment", method="lora").resolve()
    spec.run_id  # 'minilm-sentiment-lora-s0-<10 hex>'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from peft_bench.core.config import TrainConfig, from_dict
from peft_bench.core.paths import slug

# Training settings added after result stores were published, with the value that behaves as before:
# at that value they are left out of the run id, so that ``--resume`` still finds those runs.
_ADDED_TRAIN_FIELDS = {"gradient_accumulation_steps": 1, "gradient_checkpointing": False}


class UnresolvedSpec(ValueError):
    """A run id was asked of a spec that was never resolved (``RunSpec.resolve``)."""


@dataclass
class RunSpec:
    model: str
    task: str
    method: str
    method_config: dict[str, Any] = field(default_factory=dict)  # as given: overrides of the method's defaults
    train: TrainConfig = field(default_factory=TrainConfig)
    task_source: str | None = None  # hub id or local files instead of the task's own data
    # a task declared in the suite file (``interface.task_table``: its canonical table), or None
    task_def: dict[str, Any] | None = None
    trust_remote_code: bool = False  # only when the suite names this model explicitly
    suite: str = ""
    # the search this run is a trial of ({"space", "trial", "objective"}; ``core.suite``): part of
    # the run id, so that a store's trial always says which search it belongs to
    search: dict[str, Any] | None = None
    # filled by ``resolve``: what the id is made of besides the fields above
    resolved_config: dict[str, Any] | None = None  # the method's full config, defaults included
    data: dict[str, Any] | None = None  # ``interface.task.data_fingerprint``: edited data -> a new id

    @property
    def is_resolved(self) -> bool:
        return self.resolved_config is not None and self.data is not None

    def resolve(self, model_checked: bool = False) -> "RunSpec":
        """This spec with its names checked (unknown method, task or model: ``KeyError`` naming
        the valid choices; a bad config: ``ConfigError``) and ``resolved_config`` and ``data``
        filled in. A resolved spec is returned as it is. ``model_checked``: the caller already
        resolved the model name (a suite resolves each model once, not once per run)."""
        if self.is_resolved:
            return self
        from peft_bench.assets import models
        from peft_bench.core.registry import METHODS, load_builtin_plugins
        from peft_bench.interface.task import data_fingerprint
        from peft_bench.interface.task_table import task_for

        load_builtin_plugins()
        method_cls = METHODS.get(self.method)
        task = task_for(self.task, self.task_def)
        if not model_checked:
            models.resolve(self.model, self.trust_remote_code)
        cfg = from_dict(method_cls.config_cls, self.method_config, where=f"method {self.method!r}")
        return dataclasses.replace(self, resolved_config=dataclasses.asdict(cfg),
                                   data=data_fingerprint(task, self.task_source))

    @classmethod
    def from_record(cls, run: Any) -> "RunSpec":
        """The spec of a result record's ``run`` section (a ``results.schema.RunInfo`` or its dict;
        training settings validated again; a record without a data fingerprint is resolved again
        when its id is needed)."""
        if hasattr(run, "to_dict"):
            run = run.to_dict()
        return cls(model=run["model"], task=run["task"], method=run["method"],
                   method_config=dict(run.get("method_config") or {}), train=from_dict(TrainConfig, run["train"]),
                   task_source=run.get("task_source"), task_def=run.get("task_def"),
                   trust_remote_code=bool(run.get("trust_remote_code")),
                   suite=run.get("suite", ""), search=run.get("search"), resolved_config=dict(run.get("method_config") or {}),
                   data=run.get("data"))

    def as_dict(self) -> dict[str, Any]:
        """The ``run`` section's description of the spec (``method_config``: the full config)."""
        if not self.is_resolved:
            raise UnresolvedSpec(f"spec {self.model} {self.task} {self.method} is not resolved: call .resolve() first.")
        d = dataclasses.asdict(self)
        d["method_config"] = d.pop("resolved_config")
        return d

    @property
    def run_id(self) -> str:
        d = self.as_dict()
        d.pop("suite")  # the same run in two suites is the same run
        for k in ("search", "task_def"):  # absent, as in earlier stores: their ids stay valid
            if d[k] is None:
                d.pop(k)
        for k, default in _ADDED_TRAIN_FIELDS.items():  # ids of earlier result stores stay valid
            if d["train"].get(k) == default:
                d["train"].pop(k)
        blob = json.dumps(d, sort_keys=True).encode()
        # the id names folders (artifacts): a model path or hub id becomes one safe component
        return (f"{slug(self.model)}-{slug(self.task)}-{slug(self.method)}-s{self.train.seed}-"
                + hashlib.sha256(blob).hexdigest()[:10])

    def fallback_id(self) -> str:
        """An id for a spec that cannot be resolved (an unknown name, a bad config), to record its
        failure under: a hash of its fields as JSON, stable across processes."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str).encode()
        return f"invalid-{hashlib.sha256(blob).hexdigest()[:10]}"
