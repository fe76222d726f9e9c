"""Suite files (TOML): models x tasks x methods x seeds with shared training settings.

    name = "quick"
    models = ["minilm"]
    tasks = ["sentiment", "sms_spam"]
    methods = ["prompt_tuning", "lora"]
    seeds = [0]
    [train]            # TrainConfig fields, the same for every run
    steps = 100
    [method.lora]      # per-method config overrides (the method's dataclass fields)
    r = 4
    [[grid.prompt_tuning]]             # a grid: every combination of these lists ...
    num_virtual_tokens = [1, 5, 20, 100]
    [[grid.prompt_tuning]]             # ... several grids per method are unioned (same runs once)
    init = ["class_label", "random"]
    timeout_s = 3600                   # per run; a run past it is killed and recorded "timeout"
    memory_limit_gb = 20               # per run, CPU address space; past it the run is "oom"
    trust_remote_code = ["org/model"]  # the only models allowed to run code from their repo
    [search.lora]                      # hyperparameters chosen on validation: every variant of the
    lr = [3e-4, 1e-3, 3e-3]            # method runs once per point (a trial); every method that
                                       # trains gets the same number of trials (equal budget)
    search_seeds = [0]                 # optional: trials run on these seeds only; the chosen trial
                                       # then runs the other seeds (default: every seed)
    switch = true                      # then measure task switching and serving (peft_bench.serving)
    studies = ["lester"]               # report sections of studies (peft_bench.studies)

Built-in suites live in bench/suites/<name>.toml. Every problem of a suite is reported at once,
before anything runs, each naming the file, the key and the valid choices.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_bench.assets import models
from peft_bench.core.config import ConfigError, TrainConfig, UnknownName, did_you_mean, from_dict
from peft_bench.core.paths import NAME_RULE, PACKAGE_DIR, is_safe_name, slug
from peft_bench.core.registry import METHODS, TASKS, load_builtin_plugins
from peft_bench.core.spec import RunSpec
from peft_bench.interface.task_table import declared_tasks, fit_problems, resolve_source, task_for

SUITES_DIR = PACKAGE_DIR / "suites"
TOP_KEYS = {"name": str, "description": str, "models": list, "tasks": list, "methods": list,
            "seeds": list, "train": dict, "method": dict, "grid": dict, "task_source": dict, "task": dict,
            "task_files": list,
            "timeout_s": (int, float), "memory_limit_gb": (int, float), "trust_remote_code": list,
            "switch": bool, "switch_repeats": int, "studies": list, "search": dict, "search_seeds": list}


class SuiteError(ValueError):
    def __init__(self, where: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"invalid suite {where}:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class Suite:
    name: str
    description: str
    path: str
    runs: list[RunSpec]
    timeout_s: float | None = None
    memory_limit_gb: float | None = None
    switch: bool = False  # after the runs, measure task switching / serving (peft_bench.serving)
    switch_repeats: int = 20
    studies: tuple[str, ...] = ()  # report sections of studies (peft_bench.studies), e.g. ("lester",)
    # run ids of trials on seeds outside ``search_seeds``: each runs only if its trial is the one
    # chosen on validation from the trials on the search seeds (``results.selection.eligible``)
    deferred: frozenset[str] = frozenset()


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def suite_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise SuiteError(str(p), [f"file not found: {p}"])
        return p
    if (SUITES_DIR / f"{name_or_path}.toml").is_file():
        return SUITES_DIR / f"{name_or_path}.toml"
    hint = did_you_mean(name_or_path, builtin_suites())
    raise SuiteError(name_or_path, [f"no suite file or built-in suite named {name_or_path!r}.{hint} "
                                    f"Built-in suites: {', '.join(builtin_suites())}."])


def _runnable_method(name: str) -> None:
    """KeyError (unknown, with suggestions; or listed as unable to run, with the reason)."""
    if why := METHODS.get(name).refusal():
        raise UnknownName(why + ".")


def _names(data: dict, key: str, valid: list[str], problems: list[str], check=None) -> list:
    values = data.get(key, [])
    if not values:
        problems.append(f"`{key}` must be a non-empty list, got {values!r}.")
        return []
    out = []
    for v in values:
        if not isinstance(v, str):
            problems.append(f"`{key}` must be a list of names (strings), got {v!r} in it.")
            continue
        if check is not None:
            try:
                check(v)
                out.append(v)
            except KeyError as e:
                problems.append(f"`{key}`: {e.args[0]}")
        elif v not in valid:
            problems.append(f"`{key}`: unknown {key[:-1]} {v!r}.{did_you_mean(v, valid)} "
                            f"Valid choices: {', '.join(valid)}.")
        else:
            out.append(v)
    if len(set(map(repr, values))) != len(values):
        problems.append(f"`{key}` lists a value twice: {values!r}.")
    return out


def load_suite(name_or_path: str, train_overrides: dict[str, Any] | None = None) -> Suite:
    load_builtin_plugins()
    path = suite_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(str(path), [f"not valid TOML: {e}"]) from None
    problems: list[str] = []
    for k, v in data.items():
        if k not in TOP_KEYS:
            problems.append(f"unknown key {k!r}.{did_you_mean(k, TOP_KEYS)} Valid keys: {', '.join(sorted(TOP_KEYS))}.")
        elif not isinstance(v, TOP_KEYS[k]) or (isinstance(v, bool) and TOP_KEYS[k] is not bool):
            kind = "number" if isinstance(TOP_KEYS[k], tuple) else TOP_KEYS[k].__name__
            problems.append(f"`{k}` must be a {kind}, got {v!r}.")
    if problems:
        raise SuiteError(str(path), problems)

    trusted = [t for t in data.get("trust_remote_code", []) if isinstance(t, str)]
    model_names = _names(data, "models", [], problems, check=lambda m: models.resolve(m, m in trusted))
    declared = declared_tasks(data, path.parent, problems)  # name -> task_def ([task.NAME] tables)
    task_names = _names(data, "tasks", [], problems, check=lambda t: t in declared or TASKS.get(t))
    method_names = _names(data, "methods", METHODS.names(), problems, check=_runnable_method)
    seeds = data.get("seeds", [0])
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in seeds):
        problems.append(f"`seeds` must be a non-empty list of integers in [0, 2**32) (numpy's seed range), got {seeds!r}.")
    train_raw = {**data.get("train", {}), **(train_overrides or {})}
    if "seed" in train_raw:
        problems.append("`train.seed` conflicts with `seeds`: list seeds in `seeds` only.")
    train = None
    try:
        train = from_dict(TrainConfig, train_raw, where="[train]")
    except ConfigError as e:
        problems.append(str(e))
    method_cfgs: dict[str, dict] = data.get("method", {})
    for m, v in list(method_cfgs.items()):
        if not isinstance(v, dict):
            problems.append(f"[method.{m}] must be a table of config fields (e.g. [method.{m}] lr = 1e-3), got {v!r}.")
            method_cfgs.pop(m)
    for m, v in list(data.get("grid", {}).items()):
        if not (isinstance(v, dict) or (isinstance(v, list) and v and all(isinstance(g, dict) for g in v))):
            problems.append(f"[grid.{m}] must be a table of lists, or a non-empty array of such tables "
                            f"([[grid.{m}]]), got {v!r}.")
            data["grid"].pop(m)
    for m in method_cfgs:
        if m not in method_names:
            problems.append(f"[method.{m}] configures a method that is not in `methods` ({', '.join(method_names)}).")
    variants = {m: _variants(m, method_cfgs.get(m, {}), data.get("grid", {}).get(m), problems)
                for m in method_names}
    for mo in model_names:  # a method (or one of its configs) that cannot run on a model of this kind
        kind = models.resolve(mo, mo in trusted).kind
        for me in method_names:
            cls = METHODS.get(me)
            for cfg in variants[me] or [{}]:
                if why := cls.refusal(kind, from_dict(cls.config_cls, cfg)):
                    problems.append(f"`methods`: {why}; model {mo!r} is of kind {kind}.")
    for t in task_names:  # a task that a model or a method cannot take
        if t in declared and declared[t] is None:
            continue  # its table's problems are reported already
        problems += fit_problems(t, task_for(t, declared.get(t)), {mo: models.resolve(mo, mo in trusted).kind
                                                                   for mo in model_names}, method_names)
    for m in data.get("grid", {}):
        if m not in method_names:
            problems.append(f"[grid.{m}] is a grid for a method that is not in `methods` ({', '.join(method_names)}).")
    trials = _search_trials(data.get("search", {}), method_names, method_cfgs, data.get("grid", {}), train, problems)
    search_seeds = data.get("search_seeds", seeds)
    if "search_seeds" in data and (not data.get("search") or not isinstance(search_seeds, list) or not search_seeds
                                   or any(x not in seeds for x in search_seeds)):
        problems.append(f"`search_seeds` must be a non-empty list of seeds from `seeds` ({seeds!r}), with a "
                        f"[search.<method>] table to run on them, got {search_seeds!r}.")
    sources: dict[str, str] = data.get("task_source", {})
    for t, v in list(sources.items()):
        if not isinstance(v, str) or not v:
            problems.append(f"[task_source] {t} must be a path or a hub dataset id (a string), got {v!r}.")
            sources.pop(t)
        else:
            sources[t] = resolve_source(v, path.parent)
    for t in sources:
        if t not in task_names and t not in data.get("tasks", []):  # (a listed unknown task has its own message)
            problems.append(f"[task_source] names task {t!r}, which is not in `tasks` ({', '.join(task_names)}).")
    listed = [m for m in data.get("models", []) if isinstance(m, str)]
    for mo in trusted:
        if mo not in listed:  # (a listed model that failed to resolve has its own message above)
            problems.append(f"`trust_remote_code` names model {mo!r}, which is not in `models` ({', '.join(listed)}).")
    # the name is the result folder <out>/<name>: a file's stem is made safe, a given name must be
    name = data.get("name", slug(path.stem))
    if not is_safe_name(name):
        problems.append(f"`name` must be {NAME_RULE} (it names the result folder), got "
                        f"{name if len(name) <= 80 else name[:77] + '...'!r}.")
    from peft_bench.studies import REPORT_SECTIONS

    for s in data.get("studies", []):
        if s not in REPORT_SECTIONS:
            problems.append(f"`studies` names {s!r}, which is not a study; valid choices: {', '.join(sorted(REPORT_SECTIONS))}.")
    for key in ("timeout_s", "memory_limit_gb", "switch_repeats"):
        if key in data and not (data[key] > 0 and math.isfinite(data[key])):
            problems.append(f"`{key}` must be a positive finite number, got {data[key]!r}.")
    if train is not None:
        problems += _machine_problems(train)
    if train is not None and train.n_train and train.n_train < train.batch_size:
        problems.append(f"`train.n_train` ({train.n_train}) must be at least `train.batch_size` "
                        f"({train.batch_size}): no training batch could be formed.")
    if problems:
        raise SuiteError(str(path), list(dict.fromkeys(problems)))

    runs: dict[str, RunSpec] = {}
    deferred: set[str] = set()
    for mo in model_names:
        for t in task_names:
            for me in method_names:
                for cfg, trial in itertools.product(variants[me], trials.get(me) or [None]):
                    search = None if trial is None else {
                        "space": data["search"][me], "trial": trial,
                        "objective": f"validation {task_for(t, declared.get(t)).main_metric}",
                        "seeds": list(search_seeds)}
                    for s in seeds:
                        spec = RunSpec(model=mo, task=t, method=me, method_config={**cfg, **(trial or {})},
                                       train=dataclasses.replace(train, seed=s), task_source=sources.get(t),
                                       task_def=declared.get(t),
                                       trust_remote_code=mo in trusted, suite=name,
                                       search=search).resolve(model_checked=True)
                        runs.setdefault(spec.run_id, spec)  # overlapping grids: each run once
                        if search is not None and s not in search_seeds:
                            deferred.add(spec.run_id)
    return Suite(name=name, description=data.get("description", ""), path=str(path), runs=list(runs.values()),
                 timeout_s=data.get("timeout_s"), memory_limit_gb=data.get("memory_limit_gb"),
                 switch=data.get("switch", False), switch_repeats=data.get("switch_repeats", 20),
                 studies=tuple(data.get("studies", ())), deferred=frozenset(deferred))


def _machine_problems(train: TrainConfig) -> list[str]:
    """Settings this machine cannot run, and a cache it cannot write: found before any run."""
    import torch

    from peft_bench.assets.artifacts import cache_dir
    from peft_bench.results.store import StoreWriteError, check_writable

    out = []
    if not torch.cuda.is_available():
        if train.device == "cuda":
            out.append("`train.device` must be 'auto' or 'cpu' on this machine (no CUDA device), got 'cuda'.")
        if train.mixed_precision == "fp16":
            out.append("`train.mixed_precision` 'fp16' needs a CUDA device; on this CPU use 'bf16' or 'no'.")
    try:
        check_writable(cache_dir())
    except (StoreWriteError, OSError) as e:  # (cache_dir() itself may fail to create it)
        reason = e.reason if isinstance(e, StoreWriteError) else e.strerror
        out.append(f"the cache $PEFT_BENCH_CACHE ({os.environ.get('PEFT_BENCH_CACHE', '~/.cache/peft-bench')}) "
                   f"must be a folder this process can write; creating or writing it failed: {reason}.")
    return out


def check_task_data(suite: "Suite") -> None:
    """Build (or read from the cache) the splits of every task that reads a ``task_source`` or is
    declared in the suite, before any run: a bad column, label or size is one problem line here,
    not a failed record per run. Built-in sources are pinned and checked by their own tests."""
    from peft_bench.interface.task import TaskDataError, load_splits

    problems = []
    checked = set()
    for s in suite.runs:
        key = (s.task, s.task_source, json.dumps(s.task_def, sort_keys=True))
        if not (s.task_source or s.task_def) or key in checked:
            continue
        checked.add(key)
        task = task_for(s.task, s.task_def)
        try:
            splits = load_splits(task, s.task_source)
        except TaskDataError as e:
            problems.append(str(e))
            continue
        where = s.task_source or task.source or "its source"
        need = max(r.train.batch_size for r in suite.runs if r.task == s.task)
        if len(splits["train"]) < need:
            problems.append(f"task {s.task!r}: {len(splits['train'])} training rows in {where!r}, fewer than "
                            f"`batch_size` ({need}).")
    if problems:
        raise SuiteError(suite.path, problems)


def _search_trials(search: dict, methods: list[str], method_cfgs: dict, grids: dict, train: TrainConfig | None,
                   problems: list[str]) -> dict[str, list[dict]]:
    """Per method, the points of its ``[search.<method>]`` space (its trials). Every method that
    trains must get the same number of trials (a method without a table gets one), the searched
    fields must be config fields set nowhere else, and runs must be validated (``eval_points``)."""
    out: dict[str, list[dict]] = {}
    if not search:
        return out
    for m, space in search.items():
        where = f"[search.{m}]"
        if m not in methods:
            problems.append(f"{where} searches a method that is not in `methods` ({', '.join(methods)}).")
            continue
        if not METHODS.get(m).trains:
            problems.append(f"{where}: method {m!r} trains nothing, so there is nothing to search.")
            continue
        if not isinstance(space, dict) or not space:
            problems.append(f"{where} must be a table of lists of values (e.g. lr = [3e-4, 1e-3]), got {space!r}.")
            continue
        fields = {f for f in METHODS.get(m).config_cls.__dataclass_fields__}
        ok = True
        for k, values in space.items():
            if k not in fields:
                problems.append(f"{where}: unknown config field {k!r}.{did_you_mean(k, fields)} "
                                f"Valid fields: {', '.join(sorted(fields))}.")
                ok = False
            elif not isinstance(values, list) or not values or len(set(map(repr, values))) != len(values):
                problems.append(f"{where}: `{k}` must be a non-empty list of distinct values, got {values!r}.")
                ok = False
            elif k in method_cfgs.get(m, {}) or any(k in g for g in (grids.get(m) if isinstance(grids.get(m), list)
                                                                      else [grids.get(m) or {}])):
                problems.append(f"{where}: `{k}` is also set in [method.{m}] or [grid.{m}]; set it in one place only.")
                ok = False
        if ok:
            out[m] = [dict(zip(space, combo)) for combo in itertools.product(*space.values())]
            for trial in out[m]:
                try:
                    from_dict(METHODS.get(m).config_cls, {**method_cfgs.get(m, {}), **trial}, where=where)
                except ConfigError as e:
                    problems.append(str(e))
    counts = {m: len(out.get(m, [None])) for m in methods if METHODS.get(m).trains}
    if len(set(counts.values())) > 1:
        problems.append("`[search]` must give every method that trains the same number of trials (an equal "
                        "budget; a method without a [search.<method>] table gets 1), got "
                        + ", ".join(f"{m} {n}" for m, n in counts.items()) + ".")
    if train is not None and train.eval_points == 0:
        problems.append("`[search]` chooses on the validation split: `train.eval_points` must be at least 1, got 0.")
    return out


def _variants(method: str, base: dict, grids, problems: list[str]) -> list[dict]:
    """The method's configs: ``base`` alone, or base merged with every point of its grid(s)."""
    cls = METHODS.get(method).config_cls
    where = f"[method.{method}]"
    if grids is None:
        grids = []
    elif isinstance(grids, dict):
        grids = [grids]
    out: list[dict] = []
    for i, grid in enumerate(grids or [{}]):
        gwhere = f"[grid.{method}]" + (f" #{i + 1}" if len(grids) > 1 else "")
        if not isinstance(grid, dict):
            problems.append(f"{gwhere} must be a table of lists, got {grid!r}.")
            continue
        if grids and not grid:
            problems.append(f"{gwhere} is empty: give at least one key with a list of values.")
        for k, values in grid.items():
            if not isinstance(values, list) or not values:
                problems.append(f"{gwhere}: `{k}` must be a non-empty list of values, got {values!r}.")
            if k in base:
                problems.append(f"{gwhere}: `{k}` is also set in {where}; set it in one place only.")
        if any(not isinstance(v, list) or not v for v in grid.values()):
            continue
        for combo in itertools.product(*grid.values()):
            cfg = {**base, **dict(zip(grid.keys(), combo))}
            try:
                from_dict(cls, cfg, where=gwhere if grid else where)
            except ConfigError as e:
                problems.append(str(e))
                continue
            if cfg not in out:
                out.append(cfg)
    return out
