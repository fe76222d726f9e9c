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
from peft_bench.core.paths import PACKAGE_DIR
from peft_bench.assets.artifacts import PackageArtifact, cache_dir, fetch

METRICS_DIR = PACKAGE_DIR / "assets" / "metrics"
HIGHER_IS_BETTER = {"accuracy": True, "f1": True}  # direction of every metric, declared once


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    input_fields: tuple[str, ...]  # one field, or two for a text pair (encoders get the pair)
    template: str  # causal LMs read str.format(**row); the label word follows
    label_words: tuple[str, ...]  # verbaliser, in class order (class i <-> label_words[i])
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

    @property
    def num_labels(self) -> int:
        return len(self.label_words)

    def prompt(self, row: dict) -> str:
        return self.template.format(**row)


class TaskDataError(ValueError):
    pass


# -- sources ---------------------------------------------------------------------------------------
_FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _read_source(spec: TaskSpec, source: str | None):
    """The task's own artifact, or ``source``: local file(s) / a folder of split files / a hub id."""
    source = source or spec.source
    if not source:
        if spec.reader is None:
            raise TaskDataError(f"task {spec.name!r} has no default source; pass `task_source`.")
        return spec.reader(fetch(spec.artifact) if spec.artifact else Path("."))
    path = Path(source)
    if path.is_file() or path.is_dir():
        files = ({p.stem: str(p) for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")}
                 if path.is_dir() else {"train": str(path)})
        if not files:
            raise TaskDataError(f"`task_source` folder {source!r} holds no files; it needs train.<ext> (and "
                                f"optionally validation / test), <ext> one of {sorted(_FILE_FORMATS)}.")
        if "train" not in files:
            raise TaskDataError(f"`task_source` folder {source!r} has no train file (found {sorted(files)}); "
                                f"name the training rows train.<ext>.")
        fmt = _FILE_FORMATS.get(Path(files["train"]).suffix)
        if fmt is None:
            raise TaskDataError(f"`task_source` file type must be one of {sorted(_FILE_FORMATS)}, got {files['train']!r}.")
        empty = [f for f in files.values() if Path(f).stat().st_size == 0]
        if empty:
            raise TaskDataError(f"`task_source` file(s) {empty} are empty.")
        kw = {"delimiter": "\t"} if files["train"].endswith(".tsv") else {}
        try:
            return datasets.load_dataset(fmt, data_files=files, **kw)
        except Exception as e:  # noqa: BLE001 - datasets' parse errors name neither task nor a fix
            root = e
            while root.__cause__ is not None or root.__context__ is not None:  # the parser's own reason
                root = root.__cause__ or root.__context__
            text = str(root).splitlines()[0][:240] if str(root) else ""
            raise TaskDataError(f"task {spec.name!r}: could not read `task_source` {source!r} as {fmt} (every "
                                f"split file must have the same columns and types): {type(root).__name__}: {text}") from None
    try:
        return datasets.load_dataset(source, spec.hub_config)
    except Exception as e:  # offline: OfflineModeIsEnabled / ConnectionError
        raise TaskDataError(
            f"could not load `task_source` {source!r} as a local file/folder or hub dataset id "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). Offline, pass a local "
            f"csv/json/jsonl/parquet file or a folder with train/test files instead."
        ) from None


def _normalise(spec: TaskSpec, ds: datasets.Dataset) -> datasets.Dataset:
    mapping = dict(spec.columns)
    wanted = {mapping.get(f, f): f for f in (*spec.input_fields, "label")}  # source column -> task field
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        named = [f"{c!r}" + (f" (for {wanted[c]!r})" if wanted[c] != c else "") for c in missing]
        raise TaskDataError(f"task {spec.name!r}: the source has no column {', '.join(named)}; its columns are "
                            f"{ds.column_names}. Map them with `columns = {{field = \"column\"}}` or `label_column`.")
    ds = ds.select_columns(list(wanted))
    renames = {c: f for c, f in wanted.items() if c != f}
    if renames:
        ds = ds.rename_columns(renames)
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


def input_key(spec: TaskSpec, row: dict) -> str:
    """What counts as 'the same input' for de-duplication and leak checks."""
    return " \u241e ".join(" ".join(str(row[f]).lower().split()) for f in spec.input_fields)


def example_id(spec: TaskSpec, row: dict) -> str:
    """A stable id of an example: its normalised input (``input_key``, unique within a task's splits
    after de-duplication) hashed; the same in every run, process and method, so that predictions
    of two runs are paired example by example."""
    return hashlib.sha1(input_key(spec, row).encode()).hexdigest()[:16]


def _dedupe(spec: TaskSpec, ds: datasets.Dataset) -> datasets.Dataset:
    labels_of: dict[str, set] = {}
    for row in ds:
        labels_of.setdefault(input_key(spec, row), set()).add(row["label"])
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
                                 if spec.columns or spec.hub_config or spec.split_names else ())).encode())
    return cache_dir() / "splits" / f"{spec.name}-v{spec.version}-{key.hexdigest()[:12]}"


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def files_stamp(source: str | None) -> str:
    """Local files change in place: their size and mtime are part of a cache key ("" for anything
    that is not a local file or folder)."""
    if not source or not Path(source).exists():
        return ""
    files = sorted(Path(source).rglob("*")) if Path(source).is_dir() else [Path(source)]
    return ";".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.is_file())


def data_fingerprint(spec: TaskSpec, source: str | None = None) -> dict[str, object]:
    """What pins a run's data, for its run id: changed data means a new run, never a stale one.

    A local file or folder: the sha256 of its contents (every file's relative path and bytes). The
    task's own package artifact: its pinned sha256, with the task's ``version``. A hub dataset id
    cannot be pinned here (``sha256`` None: a new upload under the same id is not seen)."""
    source = source or spec.source
    if source and Path(source).exists():
        return {"kind": "local", "sha256": _content_sha256(source, files_stamp(source)), "task_version": spec.version}
    if source:
        return {"kind": "hub", "sha256": None, "task_version": spec.version}
    art = spec.artifact
    return {"kind": "artifact" if art else "builtin", "sha256": art.sha256 if art else None,
            "task_version": spec.version}


@functools.lru_cache(maxsize=64)
def _content_sha256(source: str, stamp: str) -> str:
    """sha256 over a file's bytes, or a folder's files (relative path and bytes, sorted); computed
    again only when ``stamp`` (sizes and mtimes) changes."""
    root = Path(source)
    h = hashlib.sha256()
    for f in (sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]):
        h.update(str(f.relative_to(root) if root.is_dir() else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _build_splits(spec: TaskSpec, source: str | None) -> datasets.DatasetDict:
    raw = _read_source(spec, source)
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
    counts = collections.Counter(y for part in parts.values() for y in part["label"])
    empty = [w for i, w in enumerate(spec.label_words) if not counts[i]]
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
    for name, part in (("train", train), ("test", test)):
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
