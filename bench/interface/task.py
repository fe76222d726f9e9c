"""Task definitions (``TaskSpec``), data sources and fixed, seeded, leak-free splits.

A task is data: where its rows come from, which columns feed the template, its label words
(verbaliser) and its metrics. ``load_splits`` turns any source into ``train / validation / test``
``datasets.Dataset`` objects with columns ``input fields + label``, after removing duplicate inputs
(and inputs seen with two labels) so that no test row also sits in training.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import datasets

from peft_bench.core.config import UnknownName
from peft_bench.core.paths import PACKAGE_DIR, slug
from peft_bench.assets.artifacts import PackageArtifact, cache_dir
from peft_bench.interface.answers import OBJECTIVES, PER_EXAMPLE, is_hit, normalise_answer  # noqa: F401
from peft_bench.interface.task_source import TaskDataError, data_fingerprint, files_stamp, read_source  # noqa: F401

METRICS_DIR = PACKAGE_DIR / "assets" / "metrics"
# direction of every metric, declared once (each is a module in bench/assets/metrics)
HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "f1_macro": True, "matthews_correlation": True, "exact_match": True}
@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    input_fields: tuple[str, ...]  # one field, or two for a text pair (encoders get the pair)
    template: str  # causal LMs read str.format(**row); the label word follows
    label_words: tuple[str, ...] = ()  # verbaliser, in class order (class i <-> label_words[i]); "classify" only
    reader: Callable[[Path], "datasets.Dataset | datasets.DatasetDict"] | None = None
    artifact: PackageArtifact | None = None  # the default source, read by `reader`
    label_names: tuple = ()  # raw label values of a hub/file source, in class order
    metrics: tuple[str, ...] = ("accuracy",)
    main_metric: str = "accuracy"
    test_size: int = 1000  # rows held out for test when the source has no test split
    validation_size: int = 500  # rows held out from train for model selection
    split_seed: int = 20211018  # fixed: the test split never changes with the run seed
    target_prefix: str = " "  # put between the prompt and the label word
    version: int = 1
    citation: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    # a task declared as data (``interface.task_table``): its default source, and how to read it
    source: str | None = None  # local file / folder of split files / hub id (when there is no reader)
    columns: tuple[tuple[str, str], ...] = ()  # (task field or "label", source column) where they differ
    hub_config: str | None = None
    split_names: tuple[tuple[str, str], ...] = ()  # (train / validation / test, the source's split name)
    objective: str = "classify"  # a key of OBJECTIVES
    max_new_tokens: int = 32  # "generate": the most tokens generated per example
    choice_fields: tuple[str, ...] = ()  # "choice": source columns that hold the choices (else a `choices` list)
    eval_only: bool = False  # too few examples to train on: only methods that train nothing run it

    @property
    def num_labels(self) -> int:
        return len(self.label_words)

    def prompt(self, row: dict) -> str:
        return self.template.format(**row)

    def answer_rule(self) -> str:
        """One sentence for reports: what the model answers with and how it is scored."""
        if self.objective == "choice":
            return "Each example's own choices, scored by log-likelihood (summed over the choice's tokens)."
        if self.objective == "generate":
            return (f"Answers generated greedily (at most {self.max_new_tokens} new tokens), exact match after "
                    f"normalisation (first line, lower case, whitespace collapsed, trailing full stop dropped).")
        return f"Label words: {', '.join(self.label_words)}."

    @property
    def data_fields(self) -> tuple[str, ...]:
        """The columns of the task's split rows: its input fields, `choices` (choice tasks), `label`."""
        return (*self.input_fields, *(("choices",) if self.objective == "choice" else ()), "label")


def answer_key(row: dict):
    """A row's gold answer as a hashable value (de-duplication: one input, one answer)."""
    y = row["label"]
    return tuple(y) if isinstance(y, list) else y


def _normalise(spec: TaskSpec, ds: datasets.Dataset) -> datasets.Dataset:
    mapping = dict(spec.columns)
    if spec.choice_fields:
        absent = [c for c in spec.choice_fields if c not in ds.column_names]
        if absent:
            raise TaskDataError(f"task {spec.name!r}: `choice_fields` names column(s) {absent}; the source's columns "
                                f"are {ds.column_names}.")
        ds = ds.map(lambda r: {"choices": [r[c] for c in spec.choice_fields]})
        mapping.pop("choices", None)
    wanted = {mapping.get(f, f): f for f in spec.data_fields}  # source column -> task field
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        named = [f"{c!r}" + (f" (for {wanted[c]!r})" if wanted[c] != c else "") for c in missing]
        raise TaskDataError(f"task {spec.name!r}: the source has no column {', '.join(named)}; its columns are "
                            f"{ds.column_names}. Map them with `columns = {{field = \"column\"}}` or `label_column`.")
    ds = ds.select_columns(list(wanted))
    renames = {c: f for c, f in wanted.items() if c != f}
    if renames:
        ds = ds.rename_columns(renames)
    if spec.objective == "choice":
        return _choice_answers(spec, ds)
    if spec.objective == "generate":
        return _text_answers(spec, ds)
    if spec.label_names and ds.features["label"].dtype not in ("int64", "int32"):
        index = {v: i for i, v in enumerate(spec.label_names)}
        index.update({str(v): i for i, v in enumerate(spec.label_names)})
        bad = collections.Counter(str(v) for v in ds["label"] if v not in index)
        if bad:
            listed = ", ".join(f"{v!r} ({n} row{'s' if n > 1 else ''})" for v, n in bad.most_common(8))
            raise TaskDataError(f"task {spec.name!r}: label values must be one of {list(spec.label_names)} "
                                f"(`label_names`, in class order), got {listed}.")
        ds = ds.map(lambda r: {"label": index[r["label"]]}, features=None)
    try:
        ds = ds.cast_column("label", datasets.Value("int64"))
    except (ValueError, TypeError) as e:  # pyarrow: floats with a fraction, strings without label_names
        raise TaskDataError(f"task {spec.name!r}: labels must be integer class indices 0..{spec.num_labels - 1} "
                            f"or one of the task's label names {list(spec.label_names)}; got values such as "
                            f"{ds['label'][:3]} ({type(e).__name__}: {str(e).splitlines()[0][:120]}).") from None
    bad = collections.Counter(y for y in ds["label"] if not 0 <= y < spec.num_labels)
    if bad:
        listed = ", ".join(f"{v} ({n} row{'s' if n > 1 else ''})" for v, n in sorted(bad.items())[:8])
        raise TaskDataError(f"task {spec.name!r}: labels must be class indices 0..{spec.num_labels - 1} "
                            f"({', '.join(spec.label_words)}), got {listed}.")
    return ds


def _choice_answers(spec: TaskSpec, ds: datasets.Dataset) -> datasets.Dataset:
    """Choice rows: `choices` a list of at least two texts; `label` an index into them, one of their
    texts, or a list of either (several right choices), stored as the sorted list of right indices."""
    def right(row) -> list[int] | str:
        choices, y = row["choices"], row["label"]
        if not isinstance(choices, list) or len(choices) < 2:
            return f"`choices` must be a list of at least two texts, got {choices!r}"
        out = set()
        for v in (y if isinstance(y, list) else [y]):
            if isinstance(v, str) and v in choices:
                out.add(choices.index(v))
            elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(choices):
                out.add(v)
            else:
                return f"label {v!r} is neither an index 0..{len(choices) - 1} nor one of the choices {choices!r}"
        return sorted(out) if out else f"no right choice among {choices!r}"

    rows = [dict(zip(ds.column_names, vals)) for vals in zip(*(ds[c] for c in ds.column_names))]
    for i, row in enumerate(rows):
        got = right(row)
        if isinstance(got, str):
            raise TaskDataError(f"task {spec.name!r}, row {i}: {got}.")
        row["choices"], row["label"] = [str(c) for c in row["choices"]], got
    return datasets.Dataset.from_list(rows, features=datasets.Features(
        {**{f: datasets.Value("string") for f in spec.input_fields},
         "choices": datasets.Sequence(datasets.Value("string")), "label": datasets.Sequence(datasets.Value("int64"))}))


def _text_answers(spec: TaskSpec, ds: datasets.Dataset) -> datasets.Dataset:
    """Generation rows: `label` one answer text, or a list of acceptable ones (normalised when compared)."""
    rows = []
    for i, (vals, y) in enumerate(zip(zip(*(ds[f] for f in spec.input_fields)), ds["label"])):
        answers = [str(a) for a in (y if isinstance(y, list) else [y]) if a is not None and str(a).strip()]
        if not answers:
            raise TaskDataError(f"task {spec.name!r}, row {i}: no answer text in `label` ({y!r}).")
        rows.append({**dict(zip(spec.input_fields, map(str, vals))), "label": answers})
    return datasets.Dataset.from_list(rows, features=datasets.Features(
        {**{f: datasets.Value("string") for f in spec.input_fields}, "label": datasets.Sequence(datasets.Value("string"))}))


def input_key(spec: TaskSpec, row: dict) -> str:
    """What counts as 'the same input' for de-duplication and leak checks (a choice task's
    choices are part of its input)."""
    parts = [row[f] for f in spec.input_fields] + ([" | ".join(row["choices"])] if spec.objective == "choice" else [])
    return " \u241e ".join(" ".join(str(p).lower().split()) for p in parts)


def example_id(spec: TaskSpec, row: dict) -> str:
    """A stable id of an example: its normalised input (``input_key``, unique within a task's splits
    after de-duplication) hashed; the same in every run, process and method, so that predictions
    of two runs are paired example by example."""
    return hashlib.sha1(input_key(spec, row).encode()).hexdigest()[:16]


def _dedupe(spec: TaskSpec, ds: datasets.Dataset) -> datasets.Dataset:
    labels_of: dict[str, set] = {}
    for row in ds:
        labels_of.setdefault(input_key(spec, row), set()).add(answer_key(row))
    seen: set[str] = set()
    keep = []
    for i, row in enumerate(ds):
        k = input_key(spec, row)
        if k not in seen and len(labels_of[k]) == 1:  # inputs seen with two labels are dropped
            keep.append(i)
        seen.add(k)
    return ds.select(keep)


@functools.lru_cache(maxsize=16)
def load_splits(spec: TaskSpec, source: str | None = None) -> datasets.DatasetDict:
    """Fixed train/validation/test splits (seeded by the task, never by the run).

    Built once per (task, version, source) and kept on disk as Arrow files (memory-mapped when
    read back), so that runs in separate processes do not de-duplicate and split again.
    """
    datasets.disable_progress_bars()  # per-row map/filter bars are noise next to training's
    cached = split_cache_dir(spec, source)
    if (cached / ".complete").exists():
        return datasets.load_from_disk(str(cached))
    splits = _build_splits(spec, source)
    tmp = Path(tempfile.mkdtemp(dir=cached.parent if cached.parent.exists() else _mk(cached.parent)))
    splits.save_to_disk(str(tmp / "d"))
    (tmp / "d" / ".complete").touch()
    shutil.rmtree(cached, ignore_errors=True)
    os.replace(tmp / "d", cached)  # atomic: a crash never leaves half a cache
    shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(cached))


def split_cache_dir(spec: TaskSpec, source: str | None = None) -> Path:
    """Where ``load_splits`` keeps the splits of (task, version, source) on disk."""
    source = source or spec.source
    key = hashlib.sha256(repr((spec.name, spec.version, spec.split_seed, spec.test_size, spec.validation_size,
                               spec.input_fields, spec.label_names, source, files_stamp(source))
                              + ((spec.columns, spec.hub_config, spec.split_names)
                                 if spec.columns or spec.hub_config or spec.split_names else ())
                              + ((spec.objective, spec.choice_fields) if spec.objective != "classify" else ())).encode())
    return cache_dir() / "splits" / f"{slug(spec.name)}-v{spec.version}-{key.hexdigest()[:12]}"


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _build_splits(spec: TaskSpec, source: str | None) -> datasets.DatasetDict:
    raw = read_source(spec, source)
    if isinstance(raw, datasets.Dataset):
        raw = datasets.DatasetDict({"train": raw})
    if spec.split_names:
        named = dict(spec.split_names)
        absent = [v for v in named.values() if v not in raw]
        if absent:
            raise TaskDataError(f"task {spec.name!r}: `splits` names source split(s) {absent}; the source has {sorted(raw)}.")
        taken = set(named.values())
        raw = datasets.DatasetDict({**{k: v for k, v in raw.items() if k not in taken and k not in named},
                                    **{ours: raw[theirs] for ours, theirs in named.items()}})
    parts = {k: _normalise(spec, v) for k, v in raw.items() if k in ("train", "validation", "test")}
    if "train" not in parts:
        raise TaskDataError(f"task {spec.name!r}: the source has no train split (it has {sorted(raw)}); name "
                            f"one with `splits = {{train = \"...\"}}`.")
    counts = collections.Counter(y for part in parts.values() for y in part["label"]) if spec.objective == "classify" else {}
    empty = [w for i, w in enumerate(spec.label_words) if not counts[i]] if counts else []
    if empty:
        raise TaskDataError(f"task {spec.name!r}: class(es) {empty} have no rows in the source (rows per class: "
                            f"{ {w: counts[i] for i, w in enumerate(spec.label_words)} }); drop the class from "
                            f"`label_words` or add its rows.")
    if "test" in parts:
        test = _dedupe(spec, parts["test"])
        test_keys = {input_key(spec, r) for r in test}
        train = _dedupe(spec, parts["train"])
        train = train.filter(lambda r: input_key(spec, r) not in test_keys)
    else:
        full = _dedupe(spec, parts["train"]).shuffle(seed=spec.split_seed)
        if len(full) <= spec.test_size:
            raise TaskDataError(f"task {spec.name!r}: {len(full)} unique rows, fewer than test_size={spec.test_size}.")
        test, train = full.select(range(spec.test_size)), full.select(range(spec.test_size, len(full)))
    if "validation" in parts:
        val = _dedupe(spec, parts["validation"])
    else:
        train = train.shuffle(seed=spec.split_seed + 1)
        n_val = min(spec.validation_size, len(train) // 5)
        val, train = train.select(range(n_val)), train.select(range(n_val, len(train)))
    for name, part in (("train", train), ("test", test)) if spec.objective == "classify" else ():
        if len(set(part["label"])) < 2:
            raise TaskDataError(f"task {spec.name!r}: the {name} split must hold at least two classes, got "
                                f"only {sorted(set(part['label']))} in {len(part)} rows (accuracy would mean nothing).")
    return datasets.DatasetDict(train=train, validation=val, test=test)


def split_overlap(spec: TaskSpec, splits: datasets.DatasetDict) -> dict[str, int]:
    """Number of inputs shared between each pair of splits (must be all zero)."""
    keys = {name: {input_key(spec, r) for r in ds} for name, ds in splits.items()}
    names = sorted(keys)
    return {f"{a}&{b}": len(keys[a] & keys[b]) for i, a in enumerate(names) for b in names[i + 1:]}


@functools.lru_cache(maxsize=None)
def load_metric(name: str):
    """An `evaluate` metric module shipped in bench/metrics (loads offline; once per process, and
    the forkserver loads them all before forking runs: see peft_bench.execution.preload)."""
    import evaluate

    path = METRICS_DIR / name
    if not path.is_dir():
        raise UnknownName(f"unknown metric {name!r}. Valid choices: {', '.join(sorted(HIGHER_IS_BETTER))}.")
    return evaluate.load(str(path))
