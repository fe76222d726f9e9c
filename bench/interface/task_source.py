"""Where a task's rows come from: its own package artifact, a local file or folder of split files,
or a hub dataset id; and what pins that data for a run id (``data_fingerprint``).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import datasets

from peft_bench.assets.artifacts import fetch


class TaskDataError(ValueError):
    """A task's data cannot be read or does not fit the task (the message names the fix)."""


# -- sources ---------------------------------------------------------------------------------------
_FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def read_source(spec, source: str | None):
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
