"""A run's examples are selected and tokenised once per (tokenizer, task, settings), then read back."""

from __future__ import annotations

import json

from peft_bench.assets import models
from peft_bench.engine.objectives import objective_for
from peft_bench.engine.data import run_data
from peft_bench.engine.prepare import plugins
from tests.conftest import tiny_spec


def _data(spec):
    _, task = plugins(spec)
    mspec = models.resolve(spec.model)
    objective = objective_for(mspec.kind, task, models.load_tokenizer(mspec), spec.train.max_length)
    return run_data(spec, task, models.model_dir(mspec), objective)


def test_run_data_is_cached_per_tokenizer_task_and_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path))
    spec = tiny_spec("lora", n_train=50, n_test=20)
    fresh = _data(spec)
    files = list((tmp_path / "encoded").glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith("tiny-bert-dummy-")
    assert len(fresh.train_enc) == 50 and len(fresh.test_enc) == 20
    assert fresh.train_rows["label"] == [e["label"] for e in fresh.train_enc]
    lengths = [e["length"] for e in fresh.test_enc]
    assert lengths == sorted(lengths, reverse=True)  # evaluation batches by length

    assert _data(spec) == fresh  # read back: the same examples, encodings and order
    assert _data(tiny_spec("prompt_tuning", n_train=50, n_test=20)) == fresh  # every method shares them
    assert len(list((tmp_path / "encoded").glob("*.json"))) == 1

    # it is really read back: a change in the file shows in what the next run gets
    stored = json.loads(files[0].read_text())
    stored["train_enc"][0]["label"] = 1 - stored["train_enc"][0]["label"]
    files[0].write_text(json.dumps(stored))
    assert _data(spec).train_enc[0]["label"] != fresh.train_enc[0]["label"]
    # a damaged file is rebuilt
    files[0].write_text("{not json")
    assert _data(spec) == fresh

    # settings that change the examples or their encodings get their own entry
    short = _data(tiny_spec("lora", n_train=50, n_test=20, max_length=8))
    assert max(e["length"] for e in short.train_enc) == 8 < max(e["length"] for e in fresh.train_enc)
    reseeded = _data(tiny_spec("lora", n_train=50, n_test=20, seed=1))
    assert reseeded.train_rows != fresh.train_rows and reseeded.test_rows == fresh.test_rows
    assert len(list((tmp_path / "encoded").glob("*.json"))) == 3
