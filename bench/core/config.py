"""Dataclass configs: strict construction from dicts, typed ``--set key=value`` overrides, help.

Every config field has a default and ``metadata={"help": ...}``. Unknown keys and values of the
wrong type are errors that name the field, the value and the valid choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin


class ConfigError(ValueError):
    """A user-supplied configuration value is invalid."""


class UnknownName(KeyError):
    """A name that is not there (a method, task, model, study, metric or loaded adapter); the message
    names the valid choices. The CLI prints it in one line; any other KeyError is a bug, with its
    traceback."""

    def __str__(self) -> str:  # the message, without KeyError's quotes
        return str(self.args[0]) if self.args else ""


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a default and a help string (shorthand used by every config)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def did_you_mean(value: Any, choices) -> str:
    """' Did you mean 'x'?' for the closest valid choice (or a choice containing the value)."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    if not close:
        close = [c for c in choices if str(value) and (str(value) in c or c in str(value))][:1]
    return f" Did you mean {close[0]!r}?" if close else ""


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in get_args(tp))
    if get_origin(tp) in (list, tuple, dict):
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def coerce(name: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotated type ``tp`` (with safe widening int -> float)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(name, a, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"`{name}` must not be None.")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"`{name}` must be one of {', '.join(map(repr, choices))}, got {value!r}.{did_you_mean(value, choices)}"
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{name}` must be a list, got {value!r}.")
        (inner,) = get_args(tp)[:1] or (Any,)
        return [coerce(f"{name}[{i}]", inner, v) for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"`{name}` must be true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"`{name}` must be an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"`{name}` must be a number, got {value!r}.")
        if not math.isfinite(value):
            raise ConfigError(f"`{name}` must be finite, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"`{name}` must be a string, got {value!r}.")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"`{name}` must be a table/dict, got {value!r}.")
        return value
    return value


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}: " if where else ""
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        raise ConfigError(
            f"{prefix}unknown key {k!r} for {cls.__name__}.{did_you_mean(k, fields)} "
            f"Valid keys: {', '.join(sorted(fields))}."
        )
    try:
        kwargs = {k: coerce(k, hints[k], v) for k, v in data.items()}
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set key=value`` as a TOML value, else keep the string."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"`--set` must look like key=value, got {item!r}.")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v.strip())
    return out


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for every field: used by ``peftbench list`` and ``--help``."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return rows


def check(cond: bool, name: str, rule: str, value: Any) -> None:
    """Raise ``ConfigError("`name` must be rule, got value.")`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"`{name}` must be {rule}, got {value!r}.")


# ---------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Training and evaluation settings shared by every method in a suite (same for all)."""

    steps: int = opt(200, "optimizer steps per run")
    batch_size: int = opt(16, "training examples per optimizer step, over all processes and micro-batches")
    gradient_accumulation_steps: int = opt(
        1, "micro-batches per optimizer step: each process runs batch_size / (processes x this) examples at a time")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass (less memory, more time)")
    eval_batch_size: int = opt(64, "examples per evaluation forward pass")
    head_lr: float = opt(2e-3, "learning rate of the task head (encoders), the same for every method")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_ratio: float = opt(0.06, "fraction of steps with linear warm-up (then linear decay)")
    max_grad_norm: float = opt(1.0, "gradient clipping norm; 0 disables")
    max_length: int = opt(128, "truncate inputs to this many tokens (before virtual tokens)")
    n_train: int = opt(2000, "training examples drawn from the task's train split (0 = all)")
    n_test: int = opt(1000, "test examples evaluated, a fixed prefix of the test split (0 = all)")
    n_validation: int = opt(500, "validation examples (model selection, learning curves), a fixed prefix of the "
                                 "validation split (0 = all)")
    eval_points: int = opt(4, "validation evaluations per run, evenly spaced, the last after the final step, at "
                              "most one per step (0 = none: no validation score, so no selection on validation)")
    seed: int = opt(0, "seed for initialisation, data order and dropout")
    mixed_precision: Literal["no", "fp16", "bf16"] = opt("no", "accelerate mixed precision (fp16 needs CUDA)")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto = cuda when available")
    num_threads: int = opt(0, "torch CPU threads; 0 = OMP_NUM_THREADS if set, else the cores this process may use "
                              "shared among the processes of a launch on this machine")

    def __post_init__(self) -> None:
        check(self.steps > 0, "steps", "a positive integer", self.steps)
        check(self.batch_size > 0, "batch_size", "a positive integer", self.batch_size)
        check(self.gradient_accumulation_steps > 0, "gradient_accumulation_steps", "a positive integer",
              self.gradient_accumulation_steps)
        check(self.batch_size % self.gradient_accumulation_steps == 0, "batch_size",
              f"divisible by gradient_accumulation_steps ({self.gradient_accumulation_steps})", self.batch_size)
        check(self.eval_batch_size > 0, "eval_batch_size", "a positive integer", self.eval_batch_size)
        check(self.head_lr > 0, "head_lr", "positive", self.head_lr)
        check(self.weight_decay >= 0, "weight_decay", "non-negative", self.weight_decay)
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", "in [0, 1)", self.warmup_ratio)
        check(self.max_grad_norm >= 0, "max_grad_norm", "non-negative", self.max_grad_norm)
        check(self.max_length >= 8, "max_length", "at least 8", self.max_length)
        check(self.n_train >= 0, "n_train", "non-negative", self.n_train)
        check(self.n_test >= 0, "n_test", "non-negative", self.n_test)
        check(self.n_validation >= 0, "n_validation", "non-negative", self.n_validation)
        check(self.eval_points >= 0, "eval_points", "non-negative", self.eval_points)
        check(self.num_threads >= 0, "num_threads", "non-negative", self.num_threads)
