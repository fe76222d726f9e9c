"""Scale-out: one run on several processes (DDP under `accelerate launch`), a suite split in shards.

The launch is real: `accelerate launch --multi_gpu --num_processes 2` starts two processes that form
a gloo process group on loopback (no GPU here: accelerate runs them as MULTI_CPU), train every
method with DistributedDataParallel and gather the evaluation. Its records are then checked against
a single-process evaluation of the saved weights, and against the same runs trained by one process
(the models have no dropout, so training is deterministic and must agree).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from peft_bench.cli import main
from peft_bench.core.config import ConfigError
from peft_bench.results.store import read_records
from peft_bench.core.spec import RunSpec
from peft_bench.engine.record import evaluate_saved, execute
from peft_bench.core.suite import load_suite
from tests.conftest import tiny_spec

METHODS = ["prompt_tuning", "prefix_tuning", "p_tuning", "lora", "bottleneck_adapter", "full_finetune"]
SUITE = f"""
name = "ddp"
models = ["tiny-bert", "tiny-llama"]   # an encoder (classification head) and a causal LM (rank classification)
tasks = ["dummy"]
methods = {json.dumps(METHODS)}
seeds = [0]
[train]
steps = 40
batch_size = 16
gradient_accumulation_steps = 2
n_train = 400
n_test = 67         # odd: the last batch is padded on one process, and the padding must be dropped
eval_batch_size = 16
max_length = 64
head_lr = 0.02
n_validation = 32
eval_points = 1
[method.prompt_tuning]
lr = 0.3
[method.lora]
lr = 0.01
[method.full_finetune]
lr = 0.001
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(suite: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
           "-m", "peft_bench.cli", "run", str(suite), "--out", str(out)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500,
                          cwd=Path(__file__).resolve().parent.parent)


def _tiny_bert_without_dropout(path: Path) -> str:
    """tiny-bert with every dropout off (tiny-llama has none): training is then deterministic, and a
    2-process run must follow the 1-process one up to float summation order."""
    import dataclasses

    from peft_bench.assets import models

    spec = models.resolve("tiny-bert")
    models._build_tiny(dataclasses.replace(spec, tiny={**spec.tiny, "hidden_dropout_prob": 0.0,
                                                         "attention_probs_dropout_prob": 0.0}), path)
    return str(path)


@pytest.mark.slow
def test_two_process_ddp_run_gathers_the_whole_test_split_and_writes_one_record(tmp_path):
    bert = _tiny_bert_without_dropout(tmp_path / "tiny-bert-nodrop")
    suite = tmp_path / "ddp.toml"
    text = SUITE.replace('"tiny-bert"', json.dumps(bert))
    suite.write_text(text.replace(json.dumps(METHODS), json.dumps(METHODS + ["zero_shot"])))
    # the suite's zero-shot runs already in the store, recorded by one process: the launch resumes
    first = tmp_path / "first" / "ddp.toml"
    first.parent.mkdir()
    first.write_text(text.replace(json.dumps(METHODS), '["zero_shot"]').split("[method.")[0])
    assert main(["run", str(first), "--out", str(tmp_path / "out"), "--no-switch"]) == 0
    done = read_records(tmp_path / "out" / "ddp" / "results.jsonl")
    assert len(done) == 2
    proc = _launch(suite, tmp_path / "out")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "14 runs, 2 skipped" in proc.stdout and "12 to run" in proc.stdout
    assert proc.stdout.count("[1/12]") == 1  # only the main process speaks
    lines = (tmp_path / "out" / "ddp" / "results.jsonl").read_text().splitlines()
    records = read_records(tmp_path / "out" / "ddp" / "results.jsonl")
    assert len(lines) == len(records) == 2 * len(METHODS) + 2  # exactly one record per run
    assert sorted(r.run.method for r in records) == sorted((METHODS + ["zero_shot"]) * 2)
    assert [r for r in records if r.run.method == "zero_shot"] == done  # left as they were
    for rec in records:
        assert rec.status == "ok", rec.error
        if rec.run.method == "zero_shot":
            continue
        assert rec.env.processes == 2 and rec.env.distributed_type == "MULTI_CPU"
        assert len(rec.resources.peak_mem_train_per_process_bytes) == 2
        assert rec.resources.peak_mem_train_bytes == max(rec.resources.peak_mem_train_per_process_bytes)
        assert rec.run.n_test == 67
        # accuracy over the whole test split == the saved weights evaluated by one process
        spec = RunSpec.from_record(rec.run)
        single = evaluate_saved(spec, Path(rec.run.artifact_dir))
        assert single["accuracy"]["value"] == rec.metrics["accuracy"].value, rec.run.method
        # the same run trained by one process: the same data per step, so the same training
        # (measured: BERT within 1e-7; the causal LM's token-mean loss within 3e-4, since each
        # process averages over its own label tokens)
        alone = execute(spec, tmp_path / "alone")
        assert alone.env.processes == 1
        assert rec.resources.final_loss == pytest.approx(alone.resources.final_loss, rel=1e-3), rec.run.method
        # the two processes' token counts add up to the one process's (the same examples per step)
        assert rec.resources.train_tokens == alone.resources.train_tokens, rec.run.method
        assert 0 < rec.resources.mfu < 1 and "x 2 processes" in rec.resources.peak_flops_source
        assert rec.metrics["accuracy"].value == alone.metrics["accuracy"].value, rec.run.method
    accs = {r.run.method: r.metrics["accuracy"].value for r in records if r.run.model == bert}
    # something was learned (the equality above is not the trivial one of a constant prediction)
    assert min(accs["prompt_tuning"], accs["lora"], accs["full_finetune"]) > 0.7, accs


def test_accumulation_checkpointing_and_bf16_train_in_one_process(tmp_path):
    spec = tiny_spec("lora", method_config={"lr": 0.01}, steps=20, head_lr=0.02, gradient_accumulation_steps=2,
                     gradient_checkpointing=True, mixed_precision="bf16")
    rec = execute(spec, tmp_path)
    assert rec.status == "ok", rec.error
    assert rec.resources.train_steps == 20 and rec.resources.final_loss < rec.resources.first_loss
    assert rec.env.processes == 1
    # the run id of a default run did not change when these settings were added
    assert tiny_spec("lora").run_id == tiny_spec("lora", gradient_accumulation_steps=1).run_id
    assert tiny_spec("lora").run_id != spec.run_id


def test_batch_and_precision_settings_are_checked():
    with pytest.raises(ConfigError, match=r"`batch_size` must be divisible by gradient_accumulation_steps \(3\), got 16"):
        tiny_spec("lora", gradient_accumulation_steps=3)
    rec = execute(tiny_spec("lora", mixed_precision="fp16", device="cpu"), Path("/tmp/unused"))
    assert rec.status == "failed" and "`mixed_precision` 'fp16' needs a CUDA device" in rec.error


@pytest.mark.slow
def test_shards_then_merge_give_exactly_the_suite(tmp_path, capsys):
    suite = tmp_path / "sh.toml"
    suite.write_text(SUITE.replace('name = "ddp"', 'name = "sh"').replace("steps = 40", "steps = 2")
                     .replace('"tiny-bert", "tiny-llama"', '"tiny-bert"').replace("seeds = [0]", "seeds = [0, 1]"))
    out = tmp_path / "out"
    for part in ("1/3", "2/3", "3/3"):
        assert main(["run", str(suite), "--out", str(out), "--shard", part, "--no-isolate"]) == 0
    shards = sorted((out / "sh").glob("shard-*-of-3"))
    sizes = [len(read_records(d / "results.jsonl")) for d in shards]
    assert sizes == [4, 4, 4]
    # a shard run again resumes: nothing is run twice
    assert main(["run", str(suite), "--out", str(out), "--shard", "2/3", "--no-isolate"]) == 0
    assert "0 to run" in capsys.readouterr().out
    assert main(["merge", *map(str, shards), "--out", str(out / "sh")]) == 0
    merged = (out / "sh" / "results.jsonl").read_text().splitlines()
    expected = {s.run_id for s in load_suite(str(suite)).runs}
    assert len(merged) == len(expected) == 12 and {json.loads(x)["run"]["run_id"] for x in merged} == expected
    # merging again (the merged store included) changes nothing
    assert main(["merge", *map(str, shards), "--out", str(out / "sh")]) == 0
    assert (out / "sh" / "results.jsonl").read_text().splitlines() == merged
    assert main(["report", str(out / "sh")]) == 0


def test_bad_shard_is_refused_with_the_expected_form(tmp_path, capsys):
    suite = tmp_path / "sh.toml"
    suite.write_text(SUITE)
    for bad in ("3/2", "0/2", "one/two"):
        with pytest.raises(SystemExit) as e:
            main(["run", str(suite), "--out", str(tmp_path), "--shard", bad])
        assert e.value.code == 2
        assert f"argument --shard: must look like I/N with 1 <= I <= N (e.g. 1/4), got {bad!r}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", str(suite), "--executor", "ray", "--cpus-per-run", "-1"])
    assert "argument --cpus-per-run: must be a number >= 0 (e.g. 1 or 0.5), got '-1'" in capsys.readouterr().err
