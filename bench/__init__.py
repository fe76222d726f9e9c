"""peft-bench: a comparative benchmark harness for parameter-efficient fine-tuning.

The Python API (the ``peftbench`` command is a thin layer over it)::

    from peft_bench import run_suite, load_records, summarize

    records = run_suite("quick", out="results")
    table = summarize(load_records("results/quick"))

The interface a plugin needs (a method or a task in its own package, registered through the
entry-point groups ``peft_bench.methods`` / ``peft_bench.tasks``)::

    from peft_bench import Method, MethodConfig, ModelContext, PeftMethod, register_method, opt
    from peft_bench import TaskSpec, PackageArtifact, register_task

The data flows one way through the sub-packages: ``core`` (config, registry, run specs, suites)
-> ``engine`` (data, the training and evaluation loop, measurement, one record per run) ->
``execution`` (one isolated process per run, locally or on Ray) -> ``results`` (schema, store,
tables, report) ; ``serving`` (task switching on saved artifacts), ``studies`` (analyses a suite
opts into); ``interface`` and ``assets`` are what plugins implement and load.

Names are imported on first use, so ``import peft_bench`` stays light.
"""

from __future__ import annotations

import importlib
import warnings

# peft reads transformers' deprecated `is_gradient_checkpointing` on every model it wraps: noise
# a user cannot act on, printed once per run process
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

_EXPORTS = {
    # the Python API
    "run_suite": "api", "run": "api", "load_records": "api", "summarize": "api", "SuiteRun": "api",
    # suites, runs and records
    "Suite": "core.suite", "load_suite": "core.suite", "SuiteError": "core.suite", "RunSpec": "core.spec",
    "TrainConfig": "core.config", "ResultRecord": "results.schema",
    # the plugin interface: methods
    "Method": "interface.method", "MethodConfig": "interface.method", "ModelContext": "interface.method",
    "MixedBatchUnsupported": "interface.method", "freeze": "interface.method",
    "unfreeze_head": "interface.method", "all_parameters": "interface.method",
    "assert_safetensors_only": "interface.method", "stack_as_storage": "interface.method",
    "PeftMethod": "interface.peft", "VirtualTokenConfig": "interface.peft", "task_type": "interface.peft",
    "prompt_bank_forward": "interface.peft", "prefix_bank_forward": "interface.peft", "heads_routed": "interface.peft",
    "lora_bank_forward": "interface.lora_bank", "peft_mixed_forward": "interface.lora_bank",
    # ... tasks and their data
    "TaskSpec": "interface.task", "TaskDataError": "interface.task", "PackageArtifact": "assets.artifacts",
    "tasks_from_file": "interface.task_table", "fetch": "assets.artifacts", "cache_dir": "assets.artifacts", "write_whole": "core.paths",
    # ... configs and registration
    "opt": "core.config", "check": "core.config", "ConfigError": "core.config", "UnknownName": "core.config",
    "did_you_mean": "core.config",
    "register_method": "core.registry", "register_task": "core.registry", "register_model": "core.registry",
    "METHODS": "core.registry", "TASKS": "core.registry", "MODELS": "core.registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'peft_bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"peft_bench.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
