"""The typed result schema (version 2) reads the published version-1 stores, keeps what it does not
declare, refuses undeclared keys from writers; run ids come from data alone."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from peft_bench import RunSpec, load_records
from peft_bench.results.schema import SCHEMA_VERSION, Resources, ResultRecord, RunInfo
from peft_bench.results.store import append_record, read_records

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "reports" / "quick" / "results.jsonl"  # the published default suite
# schema 1: three records reports/lester published at commit 728f420 (before it was republished)
V1 = ROOT / "tests" / "data" / "schema_v1" / "results.jsonl"


def test_published_version_1_records_load_typed_and_write_back_as_the_current_version(tmp_path):
    raw = [json.loads(line) for line in V1.read_text().splitlines()]
    assert {d["schema_version"] for d in raw} == {1} and SCHEMA_VERSION == 5
    records = load_records(V1.parent)
    assert len(records) == len(raw) == 3
    for d, rec in zip(raw, records):
        assert rec.run_id == d["run"]["run_id"] and rec.run.model == d["run"]["model"]
        assert rec.metrics["accuracy"].value == d["metrics"]["accuracy"]["value"]
        assert rec.resources.step_time_median_s == d["resources"]["step_time_median_s"]
        assert rec.params.stored_bytes == d["params"]["stored_bytes"]
        assert rec.env.git_commit == d["env"]["git_commit"] and rec.env.packages == d["env"]["packages"]
        assert rec.resources.executor is None  # declared since, absent then: null
        for name in ("run", "params", "resources", "baselines", "env"):  # every key they hold is declared
            assert getattr(rec, name).extra == {}, name
    append_record(tmp_path / "results.jsonl", records[0])
    line = json.loads((tmp_path / "results.jsonl").read_text())
    assert line["schema_version"] == SCHEMA_VERSION and line["run"]["predictions"] is None and line["validation"] == {}
    assert {k: v for k, v in line["resources"].items() if v is not None} == \
        {k: v for k, v in raw[0]["resources"].items() if v is not None}
    (back,) = read_records(tmp_path / "results.jsonl")
    assert back.schema_version == SCHEMA_VERSION and dataclasses.replace(back, schema_version=1) == records[0]


def test_an_undeclared_key_is_kept_when_read_and_refused_when_written(tmp_path):
    d = json.loads(V1.read_text().splitlines()[0])
    d["resources"]["gpu_temperature_c"] = 71  # written by another tool
    (tmp_path / "results.jsonl").write_text(json.dumps(d) + "\n")
    (rec,) = read_records(tmp_path / "results.jsonl")
    assert rec.resources.extra == {"gpu_temperature_c": 71}
    assert json.loads(rec.to_json())["resources"]["gpu_temperature_c"] == 71  # a merge loses nothing
    with pytest.raises(TypeError, match="gpu_temperature_c"):
        Resources(gpu_temperature_c=71)
    with pytest.raises(TypeError, match="step_time_s"):
        ResultRecord(run=RunInfo(run_id="x"), resources={"step_time_s": 1.0})


def test_load_records_names_a_missing_store(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        load_records(tmp_path / "nowhere")


def _ids_in_a_fresh_process(hash_seed: str) -> dict:
    code = textwrap.dedent(f"""
        import json, sys
        from peft_bench.core.spec import RunSpec
        from peft_bench.results.store import read_records
        recs = read_records({str(QUICK)!r})
        ids = [RunSpec.from_record(r.run).run_id for r in recs]
        bad = RunSpec(model="m", task="no_such_task", method="no_such_method", method_config={{"r": 4}})
        heavy = sorted(m for m in sys.modules if m in ("torch", "transformers", "peft", "datasets")
                       or m.startswith(("peft_bench.methods.", "peft_bench.tasks.", "peft_bench.assets")))
        print(json.dumps({{"recorded": [r.run_id for r in recs], "computed": ids, "fallback": bad.fallback_id(),
                          "heavy": heavy}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONHASHSEED=hash_seed))
    return json.loads(proc.stdout)


def test_run_ids_come_from_data_alone_and_are_the_same_in_every_process():
    """From a record's run section, the id is recomputed without importing torch, a model or any
    plugin, equals the published id, and is the same under two hash seeds (so is the fallback id
    of a spec that cannot be resolved)."""
    a, b = _ids_in_a_fresh_process("1"), _ids_in_a_fresh_process("2")
    assert a["computed"] == a["recorded"] and a["heavy"] == [], a
    assert a == b


def test_an_unresolved_spec_has_no_id_and_resolving_fills_config_and_data():
    from peft_bench.core.spec import UnresolvedSpec

    spec = RunSpec(model="tiny-bert", task="dummy", method="lora", method_config={"r": 4})
    with pytest.raises(UnresolvedSpec, match="resolve"):
        spec.run_id
    resolved = spec.resolve()
    assert resolved.resolved_config["r"] == 4 and "lr" in resolved.resolved_config  # defaults filled in
    assert resolved.data["kind"] == "builtin" and resolved.resolve() is resolved
    assert spec.method_config == {"r": 4}  # the spec as given is left as it was
