"""The overhead benchmark compares like with like: its plain loop does the harness's exact work."""

from __future__ import annotations

from bench.overhead import markdown, measure
from tests.conftest import tiny_spec


def test_plain_loop_does_the_same_work_as_the_harness():
    """Same examples, batches, seeds, network, optimizer and schedule: LoRA ends at the same loss
    and accuracy through the harness and through the hand-written loop."""
    spec = tiny_spec("lora", steps=6, batch_size=8, n_train=64, n_test=32, num_threads=1)
    pairs = measure({"lora": spec}, repeats=1, log=lambda m: None)
    h, p = pairs[0].harness[0], pairs[0].plain[0]
    assert h["accuracy"] == p["accuracy"]
    assert abs(h["final_loss"] - p["final_loss"]) < 1e-5, (h, p)
    for r in (h, p):
        assert r["step_time_median_s"] > 0 and r["eval_examples_per_s"] > 0 and r["run_wall_s"] > r["train_time_s"]
    table = markdown(pairs, spec, 1)
    assert "| lora     | per-step time (median)" in table and "harness / plain" in table
