"""BIG-bench's JSON tasks, offline: ``bigbench:NAME`` and ``bigbench:NAME/SUBTASK``.

The ``bigbench==1.0.0`` source distribution on the package index holds every task's ``task.json``
(fetched, checked and unpacked once, the first time a BIG-bench task is named). Each JSON task with
examples becomes one task here: ``target_scores`` examples are choice tasks (the choices with the
highest score are right), ``target`` examples are generation tasks (any listed target is right).
Prompts follow BIG-bench's own zero-shot format (``bigbench/api/json_task.py``): the task prefix,
the example input prefix, the input, the choices (when the task appends them, in a fixed order
drawn per example), the output prefix; the choice or answer follows directly.

BIG-bench has no training split: the harness splits each task's examples into train / validation
/ test (seeded, de-duplicated, as for every task): a third for test, at most 1,000. A task with
fewer than ``MIN_TRAIN`` examples is evaluation-only: all but 10 are test, and only methods that
train nothing (zero_shot) run it. Programmatic tasks (``task.py``) are left out and counted; an
example whose choices all score the same (no right one) is left out, as BIG-bench refuses it.
"""

from __future__ import annotations

import functools
import json
import statistics
import zlib
from pathlib import Path

import datasets
import numpy as np

from peft_bench import TASKS, PackageArtifact, TaskSpec, UnknownName, cache_dir, did_you_mean, fetch, write_whole

ARTIFACT = PackageArtifact("bigbench", "1.0.0", "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
                           "bigbench-1.0.0/bigbench/benchmark_tasks", "Apache-2.0", sdist=True,
                           suffixes=("/task.json", "/task.py"))
MIN_TRAIN = 300  # examples: fewer leave too little to train and validate on after a third is test
EVAL_ONLY_REST = 10  # an evaluation-only task keeps this many out of test (the majority baseline's rows)
INDEX_VERSION = 1


def _root() -> Path:
    return fetch(ARTIFACT)


def _kind(examples: list[dict]) -> str:
    return "choice" if any("target_scores" in e for e in examples) else "generate"


def _describe(rel: str, data: dict) -> dict:
    ex = data.get("examples") or []
    kind = _kind(ex)
    choices = [len(e["target_scores"]) for e in ex if "target_scores" in e] if kind == "choice" else []
    return {"n": len(ex), "kind": kind, "choices": int(statistics.median(choices)) if choices else 0,
            "max_choices": max(choices, default=0), "description": " ".join(str(data.get("description", "")).split())}


@functools.lru_cache(maxsize=1)
def index() -> dict:
    """{"tasks": {name: {n, kind, choices, max_choices, description}}, "programmatic": [names]}, built
    once from the unpacked files (reading every task.json takes a while) and kept in the cache."""
    path = cache_dir() / "bigbench" / f"index-v{INDEX_VERSION}-{ARTIFACT.sha256[:12]}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass
    root = _root()
    tasks, programmatic = {}, []
    for f in sorted(root.rglob("task.json")):
        rel = str(f.parent.relative_to(root))
        data = json.loads(f.read_text())
        if data.get("examples"):
            tasks[rel] = _describe(rel, data)
    json_dirs = {str(f.parent.relative_to(root)) for f in root.rglob("task.json")}
    programmatic = sorted(str(f.parent.relative_to(root)) for f in root.rglob("task.py")
                          if str(f.parent.relative_to(root)) not in json_dirs)
    out = {"tasks": tasks, "programmatic": programmatic}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, lambda p: p.write_text(json.dumps(out, sort_keys=True)))
    return out


def _prompt(data: dict, example: dict) -> str:
    """BIG-bench's zero-shot input (``default_format_fn``), choices appended where the task asks."""
    text = str(example["input"])
    if "target_scores" in example and data.get("append_choices_to_input", True):
        prefix = data.get("choice_prefix", "\n  choice: ")
        order = np.random.RandomState(zlib.crc32(text.encode())).permutation(sorted(example["target_scores"]))
        text = text + prefix + prefix.join(order)
    return (str(data.get("task_prefix", "")) + data.get("example_input_prefix", "\nQ: ") + text
            + data.get("example_output_prefix", "\nA: "))


def read_task(name: str, root: Path) -> datasets.Dataset:
    data = json.loads((root / name / "task.json").read_text())
    rows = []
    kind = _kind(data["examples"])
    for e in data["examples"]:
        if kind == "choice":
            if "target_scores" not in e:
                continue
            scores = {str(k): float(v) for k, v in e["target_scores"].items()}
            best = max(scores.values())
            if best <= min(scores.values()) and len(scores) > 1:
                continue  # no right choice (BIG-bench refuses such an example too)
            right = [k for k, v in scores.items() if v == best]
            rows.append({"input": _prompt(data, e), "choices": list(scores), "label": right})
        else:
            target = e.get("target")
            rows.append({"input": _prompt(data, e), "label": target if isinstance(target, list) else [target]})
    return datasets.Dataset.from_list(rows)


@functools.lru_cache(maxsize=None)
def task(rest: str) -> TaskSpec:
    """The task ``bigbench:<rest>`` (UnknownName, with suggestions, for a name BIG-bench lacks)."""
    tasks = index()["tasks"]
    if rest not in tasks:
        why = (" It is a programmatic task (task.py), which is left out." if rest in index()["programmatic"] else "")
        raise UnknownName(f"unknown BIG-bench task {rest!r}.{why}{did_you_mean(rest, list(tasks))} "
                          f"`peftbench list --tasks bigbench` lists the {len(tasks)} JSON tasks.")
    entry = tasks[rest]
    n, kind = entry["n"], entry["kind"]
    eval_only = n < MIN_TRAIN
    longest = max((len(t) for t in _targets(rest)), default=8) if kind == "generate" else 0
    return TaskSpec(
        name=f"bigbench:{rest}",
        description=(f"BIG-bench {rest}: {entry['description'][:90]}" + ("…" if len(entry["description"]) > 90 else "")
                     + f" ({n} examples" + (", evaluation-only" if eval_only else "") + ")"),
        input_fields=("input",), template="{input}", target_prefix="",
        reader=lambda root: read_task(rest, root), artifact=ARTIFACT,
        objective=kind, metrics=("exact_match",) if kind == "generate" else ("accuracy",),
        main_metric="exact_match" if kind == "generate" else "accuracy",
        # the longest answer in characters bounds its tokens (a property of the task, not of a split)
        max_new_tokens=min(64, max(8, longest // 2 + 4)),
        test_size=n - EVAL_ONLY_REST if eval_only else min(1000, n // 3),
        validation_size=min(500, max(2, n // 6)), eval_only=eval_only,
        citation="Srivastava et al. 2022, Beyond the Imitation Game (BIG-bench), arXiv:2206.04615",
    )


def _targets(rest: str) -> list[str]:
    data = json.loads((_root() / rest / "task.json").read_text())
    return [str(t) for e in data["examples"] for t in (e.get("target") if isinstance(e.get("target"), list)
                                                        else [e.get("target", "")])]


def listing() -> list[str]:
    """Lines for ``peftbench list --tasks bigbench``: every JSON task, then what is left out."""
    idx = index()
    lines = []
    for name, e in sorted(idx["tasks"].items()):
        kind = (f"choice ({e['choices']} choices" + (f", up to {e['max_choices']}" if e["max_choices"] != e["choices"]
                                                      else "") + ")") if e["kind"] == "choice" else "generate"
        mode = "evaluation-only" if e["n"] < MIN_TRAIN else "trainable"
        lines.append(f"  bigbench:{name:<56} {e['n']:>6} examples  {kind:<28} {mode}")
    trainable = sum(e["n"] >= MIN_TRAIN for e in idx["tasks"].values())
    lines.append(f"  {len(idx['tasks'])} JSON tasks ({trainable} trainable, {len(idx['tasks']) - trainable} "
                 f"evaluation-only: fewer than {MIN_TRAIN} examples); {len(idx['programmatic'])} programmatic "
                 f"tasks (task.py) left out.")
    return lines


TASKS.add_family("bigbench", task, listing)
