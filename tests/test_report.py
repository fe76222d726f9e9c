from __future__ import annotations

from bench.report import make_table
from bench.results import ResultRecord, append_record, read_records


def rec(method, seed, acc, trainable, status="ok"):
    return ResultRecord(
        run={"run_id": f"{method}-{seed}", "model": "m", "task": "t", "method": method, "method_config": {},
             "train": {"seed": seed}},
        status=status,
        metrics={"accuracy": {"value": acc, "stderr": 0.01, "higher_is_better": True}} if status == "ok" else {},
        params={"trainable_params": trainable, "total_params": 1_000_000, "trainable_head_params": 10,
                "stored_params": trainable, "stored_bytes": trainable * 4},
        resources={"peak_mem_train_bytes": 3 * 2**20, "peak_mem_eval_bytes": 2**20, "train_time_s": 12.5,
                   "step_time_median_s": 0.25},
        baselines={"majority_accuracy": 0.6},
    )


GOLDEN = """\
| method                    | model   | accuracy ↑    | trainable params ↓   | % of total   | of which head   | stored   | peak train mem ↓   | peak eval mem ↓   | train time ↓   | step time ↓   | seeds   |
|---------------------------|---------|---------------|----------------------|--------------|-----------------|----------|--------------------|-------------------|----------------|---------------|---------|
| lora                      | m       | 0.800 ± 0.010 | 2.00k                | 0.200%       | 10              | 7.8 KiB  | 3.0 MiB            | 1.0 MiB           | 12.5 s         | 0.250 s       | 1       |
| prompt_tuning             | m       | 0.750 ± 0.071 | 100                  | 0.010%       | 10              | 400 B    | 3.0 MiB            | 1.0 MiB           | 12.5 s         | 0.250 s       | 2       |
| majority class (baseline) | —       | 0.600         | —                    | —            | —               | —        | —                  | —                 | —              | —             | —       |"""


def test_make_table_golden():
    records = [rec("prompt_tuning", 0, 0.7, 100), rec("prompt_tuning", 1, 0.8, 100), rec("lora", 0, 0.8, 2000),
               rec("lora", 1, None, 2000, status="failed")]
    assert make_table(records, "t") == GOLDEN


def test_records_round_trip_and_torn_line_is_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    a, b = rec("lora", 0, 0.8, 2000), rec("prompt_tuning", 0, 0.7, 100)
    append_record(path, a)
    append_record(path, b)
    with open(path, "a") as f:
        f.write('{"run": {"run_id": "half"')  # a crash in the middle of a write
    got = {r.run_id: r for r in read_records(path)}
    assert set(got) == {"lora-0", "prompt_tuning-0"}
    assert got["lora-0"].metrics == a.metrics
