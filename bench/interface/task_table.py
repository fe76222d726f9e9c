"""Tasks declared as data: a ``[task.NAME]`` table in a suite file (or in a task file that several
suites share) declares a new task or overrides fields of a built-in one, with no Python.

    tasks = ["headlines"]
    [task.headlines]
    source = "data/headlines.jsonl"      # a local file / folder of split files (relative: to the
    input_fields = ["text"]              # suite file's folder) or a hub dataset id
    template = "Headline: {text}\\nSarcastic:"
    label_words = ["no", "yes"]
    label_names = ["no", "yes"]          # raw label values in class order (default: label_words)
    columns = {text = "headline"}        # task field -> source column; label_column = "is_sarcastic"

``declare`` checks a table and returns its canonical form (``task_def``: what a run carries, so that
its process rebuilds the same ``TaskSpec`` with ``task_for``, and what its run id is made of).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

from peft_bench.core.config import did_you_mean
from peft_bench.interface.task import HIGHER_IS_BETTER, TaskSpec

# key: (expected type, what it is); `source`, `input_fields`, `template` and `label_words` are
# required for a new task, any subset overrides a built-in task's
FIELDS: dict[str, tuple[type | tuple, str]] = {
    "source": (str, "local csv/tsv/json/jsonl/parquet file, folder of train/validation/test files, or hub id"),
    "input_fields": (list, "the template's fields: one to four (an encoder reads two as a pair, more joined)"),
    "template": (str, "the prompt, with {field} for each input field; the label word, choice or answer follows"),
    "label_words": (list, "verbaliser, in class order (objective \"classify\")"),
    "objective": (str, "classify (default: fixed label words), choice (each row's own choices) or generate"),
    "choice_fields": (list, "choice tasks: the columns that hold each row's choices (or a `choices` list column)"),
    "max_new_tokens": (int, "generate: the most tokens generated per answer (default 32)"),
    "label_names": (list, "raw label values in the source, in class order (default: label_words)"),
    "description": (str, "one line for `peftbench list` and the report"),
    "metrics": (list, f"test metrics, the first chosen on (from {', '.join(sorted(HIGHER_IS_BETTER))})"),
    "test_size": (int, "rows held out for test when the source has no test split"),
    "validation_size": (int, "rows held out from train for model selection"),
    "version": (int, "bump when the data or template changes meaning"),
    "label_column": (str, "the source column holding the labels (default: label)"),
    "columns": (dict, "task field -> source column, e.g. {text = \"sentence\"}"),
    "target_prefix": (str, "put between the prompt and the label word (default: a space)"),
    "hub_config": (str, "the hub dataset's configuration name"),
    "splits": (dict, "harness split -> source split name, e.g. {test = \"validation\"}"),
}
NEW_REQUIRED = ("source", "input_fields", "template")  # and label_words for objective "classify"
SPLITS = ("train", "validation", "test")


def declare(name: str, table: Any, base: TaskSpec | None, folder: Path, problems: list[str]) -> dict | None:
    """The canonical ``task_def`` of ``[task.<name>]`` (``base``: the built-in task it overrides),
    or None with every problem appended (each naming the table, the bad value and the valid ones)."""
    where = f"[task.{name}]"
    if not isinstance(table, dict):
        problems.append(f"{where} must be a table of task fields, got {table!r}.")
        return None
    before = len(problems)
    for k, v in table.items():
        if k not in FIELDS:
            problems.append(f"{where}: unknown field {k!r}.{did_you_mean(k, FIELDS)} Valid fields: {', '.join(FIELDS)}.")
        elif not isinstance(v, FIELDS[k][0]) or isinstance(v, bool):
            problems.append(f"{where}: `{k}` must be a {FIELDS[k][0].__name__} ({FIELDS[k][1]}), got {v!r}.")
    if base is None:
        need = NEW_REQUIRED + (("label_words",) if table.get("objective", "classify") == "classify" else ())
        missing = [k for k in need if k not in table]
        if missing:
            problems.append(f"{where} declares a new task and lacks {', '.join(f'`{k}`' for k in missing)} "
                            f"(a new task needs {', '.join(need)}).")
    if len(problems) > before:
        return None
    d = dict(table)
    if "source" in d:
        d["source"] = resolve_source(d["source"], folder)
    task_def = _canonical(d, base)
    try:
        task_for(name, task_def)
    except ValueError as e:
        problems.append(f"{where}: {e}")
        return None
    return task_def


def tasks_from_file(path: Path) -> dict[str, TaskSpec]:
    """The tasks a TOML file of ``[task.NAME]`` tables declares (a plugin's tasks as data: ``register``
    each, e.g. ``tasks/hub_benchmarks.py``); ValueError listing every problem."""
    import tomllib

    problems: list[str] = []
    tables = tomllib.loads(Path(path).read_text()).get("task", {})
    defs = {name: declare(name, table, None, Path(path).parent, problems) for name, table in tables.items()}
    if problems:
        raise ValueError(f"{path}: " + " ".join(problems))
    return {name: task_for(name, d) for name, d in defs.items()}


def _canonical(d: dict, base: TaskSpec | None) -> dict:
    return {**({"base": base.name} if base is not None else {}), **{k: d[k] for k in sorted(d)}}


def resolve_source(source: str, folder: Path) -> str:
    """A declared task's ``source`` or a ``[task_source]`` path: a relative path is the suite file's
    folder's; what exists nowhere stays as written (a hub id)."""
    p = Path(source).expanduser()
    if p.is_absolute():
        return str(p)
    return str((folder / p).resolve()) if (folder / p).exists() else source


def task_for(name: str, task_def: dict | None) -> TaskSpec:
    """The task a run means: the registered task ``name``, or the one its ``task_def`` declares."""
    if task_def is None:
        from peft_bench.core.registry import TASKS

        return TASKS.get(name)
    return _build(name, json.dumps(task_def, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _build(name: str, blob: str) -> TaskSpec:
    d = json.loads(blob)
    fields: dict[str, Any] = {}
    for k, v in d.items():
        if k in ("base", "source", "description", "template", "target_prefix", "hub_config", "label_column",
                 "test_size", "validation_size", "version", "objective", "max_new_tokens"):
            fields[k] = v
        elif k in ("input_fields", "label_words", "label_names", "metrics", "choice_fields"):
            fields[k] = tuple(v)
        elif k in ("columns", "splits"):
            fields[k] = tuple(sorted((str(a), str(b)) for a, b in v.items()))
    if "label_column" in fields:
        fields["columns"] = tuple(sorted({**dict(fields.get("columns", ())), "label": fields.pop("label_column")}.items()))
    if "splits" in fields:
        fields["split_names"] = fields.pop("splits")
    if "metrics" in fields:
        fields["main_metric"] = fields["metrics"][0] if fields["metrics"] else ""
    base = fields.pop("base", None)
    if base is not None:
        from peft_bench.core.registry import TASKS

        spec = dataclasses.replace(TASKS.get(base), **fields)
    else:
        if fields.get("objective", "classify") != "classify":
            fields.setdefault("metrics", ("exact_match",) if fields["objective"] == "generate" else ("accuracy",))
            fields.setdefault("main_metric", fields["metrics"][0])
        fields.setdefault("label_names", fields.get("label_words", ()))
        fields.setdefault("description", f"declared task {name} ({Path(fields['source']).name})")
        spec = TaskSpec(name=name, **fields)
    _check(spec)
    return spec


def _check(spec: TaskSpec) -> None:
    """What a declared task must satisfy before any data is read (ValueError naming the field)."""
    from peft_bench.interface.task import OBJECTIVES

    n = len(spec.input_fields)
    if not 1 <= n <= 4 or not all(isinstance(f, str) and f for f in spec.input_fields):
        raise ValueError(f"`input_fields` must name one to four fields, got {list(spec.input_fields)}.")
    if spec.objective not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {', '.join(OBJECTIVES)}, got {spec.objective!r}.")
    if spec.choice_fields and (spec.objective != "choice" or len(spec.choice_fields) < 2):
        raise ValueError(f"`choice_fields` names at least two columns of a task with objective \"choice\", "
                         f"got {list(spec.choice_fields)} (objective {spec.objective!r}).")
    if spec.objective == "generate" and not 1 <= spec.max_new_tokens <= 512:
        raise ValueError(f"`max_new_tokens` must be in 1..512, got {spec.max_new_tokens}.")
    if spec.objective == "classify" and (len(spec.label_words) < 2 or len(set(spec.label_words)) != len(spec.label_words)):
        raise ValueError(f"`label_words` must be at least two distinct words, got {list(spec.label_words)}.")
    if spec.label_names and len(spec.label_names) != len(spec.label_words):
        raise ValueError(f"`label_names` must give one raw value per label word ({len(spec.label_words)}), "
                         f"got {list(spec.label_names)}.")
    try:
        spec.prompt({f: "x" for f in spec.input_fields})
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"`template` {spec.template!r} must use only the input fields "
                         f"{list(spec.input_fields)} as {{field}}: {type(e).__name__}: {e}.") from None
    unknown = [m for m in spec.metrics if m not in HIGHER_IS_BETTER]
    if not spec.metrics or unknown:
        raise ValueError(f"`metrics` must be chosen from {', '.join(sorted(HIGHER_IS_BETTER))}, got {list(spec.metrics)}.")
    fits = {"generate": {"exact_match"}, "choice": {"accuracy"}}.get(spec.objective)
    if fits is not None and not set(spec.metrics) <= fits:
        raise ValueError(f"`metrics` of a task with objective {spec.objective!r} must be chosen from {sorted(fits)}, "
                         f"got {list(spec.metrics)}.")
    bad = [k for k, _ in spec.split_names if k not in SPLITS]
    if bad:
        raise ValueError(f"`splits` maps the harness's splits ({', '.join(SPLITS)}), got {bad}.")
    for key in ("test_size", "validation_size"):
        if getattr(spec, key) < 1:
            raise ValueError(f"`{key}` must be at least 1, got {getattr(spec, key)}.")


def declared_tasks(data: dict, folder: Path, problems: list[str]) -> dict[str, dict]:
    """The ``task_def`` of every task a suite declares (None where its table has problems): its
    ``[task.NAME]`` tables and those of the TOML files named in ``task_files`` (relative to the
    suite's folder; the suite's own tables win over a file's; two files declaring one name is a
    problem)."""
    import tomllib

    from peft_bench.core.registry import TASKS

    tables: dict[str, tuple[Any, Path]] = {}
    for f in data.get("task_files", []):
        p = Path(f) if Path(f).is_absolute() else folder / f
        try:
            shared = tomllib.loads(p.read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            problems.append(f"`task_files`: cannot read {str(p)!r} as TOML ({type(e).__name__}: {e}).")
            continue
        other = sorted(set(shared) - {"task"})
        if other or not isinstance(shared.get("task"), dict):
            problems.append(f"`task_files`: {str(p)!r} must hold [task.NAME] tables only"
                            + (f", got key(s) {other}." if other else "."))
            continue
        for name, table in shared["task"].items():
            if name in tables:
                problems.append(f"`task_files`: task {name!r} is declared in both {str(tables[name][1])!r} and {str(p)!r}.")
            tables[name] = (table, p.parent)
    for name, table in data.get("task", {}).items():
        tables[name] = (table, folder)
    # a table with problems stays a name (None): the suite reports the table's problem, not an unknown task
    return {name: declare(name, table, TASKS.get(name) if name in TASKS else None, where, problems)
            for name, (table, where) in tables.items()}


def fit_problems(name: str, task: TaskSpec, kinds: dict[str, str], methods: list[str]) -> list[str]:
    """Why a suite's models (name -> kind) or methods cannot take ``task``: a choice or generation
    task on an encoder; an evaluation-only task with a method that trains."""
    from peft_bench.core.registry import METHODS
    from peft_bench.engine.objectives import refusal

    out = [f"`tasks`: {why}; model {mo!r} is of kind {kind}." for mo, kind in kinds.items() if (why := refusal(kind, task))]
    training = [m for m in methods if METHODS.get(m).trains]
    if task.eval_only and training:
        out.append(f"`tasks`: task {name!r} is evaluation-only ({task.description}): too few examples to train "
                   f"on; methods that train ({', '.join(training)}) cannot run it, zero_shot can.")
    return out
