"""Per-example predictions: the one place they are written, found and read back.

Every run writes one file beside its store, ``<store>/predictions/<run_id>.json.gz``, named in its
record by a relative path (``run.predictions``), so a store folder moves or is committed whole:

    {"format": 1, "run_id": ..., "classes": [label words, in class order],
     "splits": {"test": {"ids": [...], "gold": [...], "pred": [...], "scores": [[...], ...]},
                "validation": {...}}}

``gold`` is a class index, or a list of right answers (choice indices, accepted answer texts);
``pred`` the predicted class / choice or the normalised generated text. ``ids`` are stable example ids (``interface.task.example_id``): two runs of a task are paired
example by example on them, whatever order they evaluated in. ``scores`` are each class's score
(an encoder head's logits, or the label words' or choices' log-likelihoods of a causal LM; null
for a choice an example does not have; empty for generated answers). gzip with a fixed
header time, so the same predictions give the same bytes.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path

import numpy as np

from peft_bench.core.paths import contained
from peft_bench.interface.answers import is_hit
from peft_bench.results.schema import ResultRecord

FOLDER = "predictions"
FORMAT = 1


def write_predictions(store_dir: Path, run_id: str, classes: list[str], splits: dict[str, dict]) -> str:
    """Write a run's predictions (whole or not at all) and return their path relative to
    ``store_dir``, for the record."""
    rel = f"{FOLDER}/{run_id}.json.gz"
    path = contained(Path(store_dir) / rel, store_dir, "the predictions file")
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = json.dumps({"format": FORMAT, "run_id": run_id, "classes": list(classes), "splits": splits},
                      separators=(",", ":")).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as fh:
            fh.write(blob)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return rel


def predictions_path(record: ResultRecord) -> Path | None:
    """Where a record's predictions are on disk (None when it has none, or was not read from a store)."""
    rel = record.run.predictions
    if not rel or record.origin is None:
        return None
    return Path(record.origin) / rel


@functools.lru_cache(maxsize=512)
def _load(path: str, stamp: tuple) -> dict | None:
    try:
        with gzip.open(path, "rb") as fh:
            data = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def read_predictions(record: ResultRecord, split: str = "test") -> dict | None:
    """A record's predictions on ``split`` ({ids, gold, pred, scores}), or None when they are not
    on disk (a record from before per-example predictions, or a file deleted or unreadable)."""
    path = predictions_path(record)
    if path is None or not path.is_file():
        return None
    st = path.stat()
    data = _load(str(path), (st.st_size, st.st_mtime_ns))
    part = (data or {}).get("splits", {}).get(split)
    return part if part and len(part.get("ids", [])) == len(part.get("pred", [])) else None


def correctness(records: list[ResultRecord], split: str = "test", ids: list[str] | None = None
                ) -> tuple[np.ndarray, list[str]] | None:
    """0/1 correctness of ``records`` (the seeds of one variant) as a (seeds, examples) matrix over
    the example ids every record has (or ``ids``, which they must all have), columns in one fixed
    order; None when any record lacks predictions on ``split`` or the ids are not shared."""
    parts = [read_predictions(r, split) for r in records]
    if not parts or any(p is None for p in parts):
        return None
    if ids is None:
        common = set(parts[0]["ids"]).intersection(*(p["ids"] for p in parts[1:]))
        ids = sorted(common)
    if not ids:
        return None
    rows = []
    for p in parts:
        hit = {i: int(is_hit(g, y)) for i, g, y in zip(p["ids"], p["gold"], p["pred"])}
        if any(i not in hit for i in ids):
            return None
        rows.append([hit[i] for i in ids])
    return np.asarray(rows, dtype=float), list(ids)
