"""A run's examples: selected, tokenised once per (tokenizer, task, objective, settings), cached.

``run_data`` is the one place examples are chosen and encoded: training (``engine.prepare``) and
serving (``serving.switching``) read the same encodings, so every method and every measurement
sees exactly the same inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_bench.assets.artifacts import cache_dir
from peft_bench.core.paths import slug, write_whole
from peft_bench.core.spec import RunSpec
from peft_bench.interface.task import TaskSpec, example_id, load_splits


def encode(rows: dict[str, list], objective, cols: list[str] | None = None) -> list[dict[str, Any]]:
    """Tokenise a run's examples (columns as lists: the task's ``data_fields``) into one dict per
    example: the objective's encodings, its ``label`` and its stable ``id``
    (``interface.task.example_id``). Plain lists, not a ``datasets.map``: the examples are
    already in memory, and map's Arrow round trip and fingerprinting cost more than the tokenising
    itself (0.2-1.8 s per run, measured)."""
    task = objective.task
    cols = [f for f in task.data_fields if f in rows] if cols is None else cols
    enc = objective.encode({f: rows[f] for f in cols})
    ids = [example_id(task, {f: rows[f][i] for f in cols}) for i in range(len(rows["label"]))]
    return [{**{k: v[j] for k, v in enc.items()}, "label": y, "id": i}
            for j, (y, i) in enumerate(zip(rows["label"], ids))]


@dataclass
class RunData:
    """A run's examples: their columns (input fields + label, as lists) and their encodings (the
    evaluation encodings, validation and test, sorted by length, longest first)."""

    train_rows: dict[str, list]
    test_rows: dict[str, list]
    train_enc: list[dict[str, Any]]
    test_enc: list[dict[str, Any]]
    val_enc: list[dict[str, Any]]


DATA_CACHE_VERSION = 3  # bump when what ``run_data`` builds changes shape


def _data_key(spec: RunSpec, task: TaskSpec, model_path: str, objective) -> str | None:
    """What determines a run's encoded examples; None where it cannot be pinned (a hub model id)."""
    import inspect

    from peft_bench.interface.task import files_stamp, split_cache_dir

    if not Path(model_path).is_dir():
        return None
    cfg = spec.train
    code = inspect.getsource(type(objective))  # editing the objective's code invalidates the cache
    blob = repr((DATA_CACHE_VERSION, split_cache_dir(task, spec.task_source).name, task.input_fields,
                 task.template, task.label_words, task.target_prefix, str(Path(model_path).resolve()),
                 files_stamp(model_path), type(objective).__qualname__, hashlib.sha256(code.encode()).hexdigest(), cfg.max_length,
                 cfg.seed, cfg.n_train, cfg.n_test, cfg.n_validation)
                + ((task.objective, task.max_new_tokens) if task.objective != "classify" else ()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_data(spec: RunSpec, task: TaskSpec, model_path: str, objective) -> RunData:
    """The run's training examples (its seeded shuffle of the train split, first ``n_train``),
    validation examples (the first ``n_validation``) and test examples (the first ``n_test``), tokenised by ``objective`` (the tokenizer of the model
    loaded from ``model_path``).

    Kept on disk per (tokenizer files, task and source, objective code, max_length, seed, n_train,
    n_test, n_validation) as JSON: the runs of a suite that share a model and task (every method, every grid
    point) read their examples back instead of selecting and tokenising again. Written to a
    temporary file and renamed into place (concurrent shards write the same bytes). Nothing here
    is method-specific, so every method trains on exactly the same encodings."""
    cfg, cols = spec.train, list(task.data_fields)
    key = _data_key(spec, task, model_path, objective)
    path = cache_dir() / "encoded" / f"{slug(spec.model)}-{slug(task.name)}-{key}.json" if key else None
    if path is not None and path.is_file():
        try:
            return RunData(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):  # unreadable: build it again below
            pass
    splits = load_splits(task, spec.task_source)
    train_ds = splits["train"].shuffle(seed=cfg.seed)
    # the run's examples, copied out of the memory-mapped split (reading columns through a
    # shuffled index mapping costs more than the copy)
    train_ds = train_ds.select(range(min(cfg.n_train or len(train_ds), len(train_ds)))).flatten_indices(keep_in_memory=True)
    test_ds = splits["test"].select(range(min(cfg.n_test or len(splits["test"]), len(splits["test"])))).flatten_indices(
        keep_in_memory=True)
    val = splits["validation"]
    val_ds = val.select(range(min(cfg.n_validation or len(val), len(val)))).flatten_indices(keep_in_memory=True)
    train_rows, test_rows = train_ds[:], test_ds[:]  # columns as Python lists, converted once
    # evaluation batches are sorted by length (stable): less padding, same predictions
    by_length = lambda enc: sorted(enc, key=lambda r: -r["length"])  # noqa: E731
    data = RunData(train_rows=train_rows, test_rows=test_rows, train_enc=encode(train_rows, objective, cols),
                   test_enc=by_length(encode(test_rows, objective, cols)),
                   val_enc=by_length(encode(val_ds[:], objective, cols)))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(path, lambda f: f.write_text(json.dumps(dataclasses.asdict(data))))
    return data


