"""One contract run per task: fixed splits, no leaks, labels in range, templates that format."""

from __future__ import annotations

import collections

import pytest

from peft_bench.core.registry import TASKS, load_builtin_plugins
from peft_bench.interface.task import TaskDataError, _build_splits, input_key, load_splits, split_overlap

load_builtin_plugins()


# every task whose data is offline (a package artifact); hub-sourced definitions are run on fixture
# rows shaped like the hub's in tests/test_hub_benchmarks.py
@pytest.mark.parametrize("name", [n for n in TASKS.names() if not TASKS.get(n).source])
def test_task_contract(name):
    spec = TASKS.get(name)
    splits = load_splits(spec)
    assert set(splits) == {"train", "validation", "test"}
    assert split_overlap(spec, splits) == {"test&train": 0, "test&validation": 0, "train&validation": 0}
    for part, ds in splits.items():
        labels = collections.Counter(ds["label"])
        assert set(labels) == set(range(spec.num_labels)), (part, labels)
        keys = [input_key(spec, r) for r in ds]
        assert len(keys) == len(set(keys)), f"duplicate inputs inside {part}"
    row = splits["test"][0]
    prompt = spec.prompt(row)
    assert all(str(row[f])[:20] in prompt for f in spec.input_fields)
    assert spec.main_metric in spec.metrics
    # the split is fixed by the task, not by the run
    assert _build_splits(spec, None)["test"]["label"] == splits["test"]["label"]


def test_boolq_train_excludes_dev_by_question():
    from peft_bench.tasks.boolq import read_boolq
    from peft_bench.assets.artifacts import fetch

    spec = TASKS.get("boolq")
    raw = read_boolq(fetch(spec.artifact))
    assert len(raw["train"]) == 9427 and len(raw["test"]) == 3270
    test_q = {r["question"].strip().lower() for r in raw["test"]}
    assert not any(r["question"].strip().lower() in test_q for r in raw["train"])


def test_sizes_of_real_tasks():
    sizes = {n: {k: len(v) for k, v in load_splits(TASKS.get(n)).items()} for n in ("sentiment", "sms_spam")}
    assert sizes["sentiment"]["test"] == 2000 and sizes["sentiment"]["train"] > 10000
    assert sizes["sms_spam"]["test"] == 1000
    # 4,862 messages, many repeated: far fewer unique ones remain
    assert sum(sizes["sms_spam"].values()) < 4600


def test_local_file_source(tmp_path):
    spec = TASKS.get("sentiment")
    lines = ["text,label"] + [f"review number {i} {'good' if i % 2 else 'bad'},{'fresh' if i % 2 else 'rotten'}"
                              for i in range(3000)]
    (tmp_path / "mine.csv").write_text("\n".join(lines))
    splits = load_splits(spec, str(tmp_path / "mine.csv"))
    assert len(splits["test"]) == spec.test_size
    assert set(splits["train"]["label"]) == {0, 1}


def test_bad_local_labels_are_named(tmp_path):
    (tmp_path / "bad.csv").write_text("text,label\nfine film,meh\nbad film,rotten\n")
    with pytest.raises(TaskDataError, match=r"label values must be one of \['rotten', 'fresh'\] \(`label_names`, in class order\), got 'meh' \(1 row\)"):
        load_splits(TASKS.get("sentiment"), str(tmp_path / "bad.csv"))


def test_unreachable_hub_source_is_a_clear_error(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(TaskDataError, match=r"could not load `task_source` 'nobody/no-such-dataset'.*local csv/json"):
        load_splits(TASKS.get("sentiment"), "nobody/no-such-dataset")
