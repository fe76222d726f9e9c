"""SuperGLUE and GLUE definitions (tasks/hub_benchmarks.toml): each one read from fixture rows
shaped like the hub's (its columns, label encoding, split names, unlabelled test split), split,
encoded and scored by a tiny causal LM (and encoder, where the task has a fixed label set), and
its metrics computed; offline, the hub source fails with the clear offline error."""

from __future__ import annotations

import json

import pytest
import torch

from peft_bench.assets import models
from peft_bench.core.registry import TASKS, load_builtin_plugins
from peft_bench.engine.data import encode
from peft_bench.engine.measurement import compute_metrics
from peft_bench.engine.objectives import objective_for
from peft_bench.interface.task import TaskDataError, load_splits

load_builtin_plugins()

WORDS = "the cat sat on a mat while river stones shone under moon light near old town".split()


def text(i: int, n: int = 8) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n)) + f" {i}"


def row(config: str, i: int, label: int) -> dict:
    """One row with the hub dataset's columns (aps/super_glue, nyu-mll/glue) and label encoding."""
    t = text(i)
    shapes = {
        "boolq": {"question": t, "passage": text(i + 1, 20), "idx": i},
        "cb": {"premise": t, "hypothesis": text(i + 2), "idx": i},
        "rte": {"premise": t, "hypothesis": text(i + 2), "idx": i},
        "copa": {"premise": t, "choice1": text(i + 3, 5), "choice2": text(i + 4, 5),
                 "question": ["cause", "effect"][i % 2], "idx": i},
        "wic": {"word": WORDS[i % len(WORDS)], "sentence1": t, "sentence2": text(i + 5), "start1": 0, "start2": 0,
                "end1": 3, "end2": 3, "idx": i},
        "wsc.fixed": {"text": t, "span1_index": 1, "span2_index": 4, "span1_text": "cat", "span2_text": "it", "idx": i},
        "multirc": {"paragraph": text(i // 3, 20), "question": text(i // 3 + 1), "answer": t,
                    "idx": {"paragraph": i // 9, "question": i // 3, "answer": i}},
        "record": {"passage": text(i, 20), "query": f"@placeholder {t}", "entities": ["Alice", "Bob", f"Carol {i}"],
                   "entity_spans": {"text": ["Alice"], "start": [0], "end": [5]},
                   "answers": [["Alice", "Bob", f"Carol {i}"][max(label, 0)]], "idx": {"passage": i, "query": i}},
        "sst2": {"sentence": t, "idx": i},
        "mrpc": {"sentence1": t, "sentence2": text(i + 6), "idx": i},
        "qnli": {"question": t, "sentence": text(i + 6), "idx": i},
        "qqp": {"question1": t, "question2": text(i + 6), "idx": i},
        "mnli": {"premise": t, "hypothesis": text(i + 6), "idx": i},
        "cola": {"sentence": t, "idx": i},
    }
    out = shapes[config]
    if config != "record":
        out["label"] = label
    return out


def fixture(folder, spec, config: str) -> str:
    """train / validation / test files named as the hub's splits; test unlabelled (label -1)."""
    k = max(2, len(spec.label_words)) if spec.objective != "choice" else (3 if config == "record" else 2)
    test_name = dict(spec.split_names).get("test", "validation")
    parts = {"train": range(0, 60), test_name: range(1000, 1018), "test": range(2000, 2006)}
    folder.mkdir()
    for split, ids in parts.items():
        with open(folder / f"{split}.jsonl", "w") as f:
            for i in ids:
                f.write(json.dumps(row(config, i, -1 if split == "test" else i % k)) + "\n")
    return str(folder)


HUB_TASKS = ["superglue_boolq", "superglue_cb", "superglue_copa", "superglue_rte", "superglue_wic", "superglue_wsc",
             "superglue_multirc", "superglue_record", "glue_sst2", "glue_mrpc", "glue_qnli", "glue_qqp", "glue_mnli",
             "glue_cola"]


def test_every_hub_task_is_defined():
    assert sorted(n for n in TASKS.names() if n.startswith(("superglue_", "glue_"))) == sorted(HUB_TASKS)


@pytest.mark.parametrize("name", HUB_TASKS)
def test_a_hub_task_reads_splits_scores_and_computes_its_metrics(tmp_path, name):
    spec = TASKS.get(name)
    source = fixture(tmp_path / "data", spec, spec.hub_config)
    splits = load_splits(spec, source)
    assert len(splits["test"]) == 18  # the hub's validation split is the test split; its test is unused
    assert len(splits["train"]) + len(splits["validation"]) == 60
    kinds = ["causal"] + (["encoder"] if spec.objective == "classify" else [])
    for kind in kinds:
        lm = models.load(models.resolve(f"tiny-{'llama' if kind == 'causal' else 'bert'}"), max(2, spec.num_labels))
        obj = objective_for(kind, spec, lm.tokenizer, 96)
        rows = splits["test"][:8]
        feats = encode(rows, obj)
        with torch.inference_mode():
            scores = obj.scores(lm.model.eval(), obj.collate(feats, training=False))
        width = max(len(c) for c in rows["choices"]) if spec.objective == "choice" else spec.num_labels
        assert scores.shape == (8, width) and torch.isfinite(scores[:, :2]).all()
        pred, _ = obj.decode(scores)
        metrics = compute_metrics(spec.metrics, pred, [obj.gold(y) for y in rows["label"]])
        assert set(metrics) == set(spec.metrics) and all(-1 <= m["value"] <= 1 for m in metrics.values())


def test_record_answers_are_choices_and_any_listed_answer_counts(tmp_path):
    spec = TASKS.get("superglue_record")
    splits = load_splits(spec, fixture(tmp_path / "data", spec, "record"))
    r = splits["test"][0]
    assert r["choices"][r["label"][0]] in ("Alice", "Bob") or r["choices"][r["label"][0]].startswith("Carol")


def test_a_hub_task_offline_fails_with_the_clear_offline_error(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(TaskDataError, match=r"could not load `task_source` 'nyu-mll/glue'.*Offline, pass a local"):
        load_splits(TASKS.get("glue_cola"))
