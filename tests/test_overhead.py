"""The overhead benchmark compares like with like: its plain loop does the harness's exact work."""

from __future__ import annotations

import pytest

from peft_bench.studies.overhead import markdown, measure
from tests.conftest import tiny_spec

pytestmark = pytest.mark.slow  # end to end: real processes, launches or models


def test_plain_loop_does_the_same_work_as_the_harness():
    """Same examples, batches, seeds, network, initialisation, optimizer and schedule: LoRA and
    prompt tuning end at the same loss and accuracy through the harness and the hand-written loop,
    run after run and in lockstep; Trainer and the isolated run reach the same loss too."""
    specs = {m: tiny_spec(m, steps=6, batch_size=8, n_train=32, n_test=32, num_threads=1)
             for m in ("lora", "prompt_tuning")}
    pairs = measure(specs, repeats=1, log=lambda m: None)
    for pair in pairs:
        h, p = pair.harness[0], pair.plain[0]
        assert h["accuracy"] == p["accuracy"], pair.method
        assert abs(h["final_loss"] - p["final_loss"]) < 1e-5, (pair.method, h, p)
        for r in (h, p):
            assert r["step_time_median_s"] > 0 and r["eval_examples_per_s"] > 0 and r["run_wall_s"] > r["train_time_s"]
        # in lockstep (each side keeps its own random state): the same batches and dropout masks,
        # over two epochs (32 examples, 4 batches each)
        assert set(pair.lockstep) == {"plain", "trainer", "isolation"}
        losses = {ref: res[0]["harness_loss"] for ref, res in pair.lockstep.items()}
        assert max(losses.values()) - min(losses.values()) < 1e-6, (pair.method, losses)
        for ref, (res,) in pair.lockstep.items():
            assert abs(res["harness_loss"] - res["reference_loss"]) < 1e-5, (pair.method, ref, res)
            assert res["harness_step_s"] > 0 and res["reference_step_s"] > 0
    table = markdown(pairs, specs["lora"], 1)
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| lora ")]
    assert [(r[2].strip(), r[4].split()[0]) for r in rows] == [
        ("per-step time, in lockstep", "plain"), ("per-step time, in lockstep", "transformers.Trainer"),
        ("per-step time, in lockstep", "same"), ("per-step time, whole runs interleaved", "plain"),
        ("evaluation throughput", "plain"), ("whole-run wall time", "plain")], table


def test_trainer_and_the_isolated_run_do_the_same_work_on_a_causal_lm():
    """A causal LM: Trainer learns the label word after the prompt (labels -100 elsewhere) from the
    same batches; the plain loop (encoders only) is left out, and alone it is refused."""
    import pytest

    spec = tiny_spec("lora", model="tiny-llama", steps=6, batch_size=8, n_train=32, n_test=32, num_threads=1)
    (pair,) = measure({"lora": spec}, repeats=1, log=lambda m: None)
    assert set(pair.lockstep) == {"trainer", "isolation"} and not pair.harness
    for ref, (res,) in pair.lockstep.items():
        assert abs(res["harness_loss"] - res["reference_loss"]) < 1e-5, (ref, res)
    with pytest.raises(ValueError, match="the plain loop handles encoder models .* add trainer or isolation"):
        measure({"lora": spec}, repeats=1, log=lambda m: None, references=("plain",))


def test_suite_overhead_times_a_suite_and_breaks_the_difference_down(tmp_path):
    import re

    from peft_bench.studies.overhead import suite_overhead

    suite = tmp_path / "tiny_overhead.toml"
    suite.write_text('models = ["tiny-bert"]\ntasks = ["dummy"]\nmethods = ["lora", "prompt_tuning"]\nseeds = [0]\n'
                     "[train]\nsteps = 4\nbatch_size = 8\nn_train = 64\nn_test = 32\n")
    import time

    t0 = time.perf_counter()
    text = suite_overhead(str(suite), log=lambda m: None)
    outside = time.perf_counter() - t0
    head = re.search(r"\((fresh process, 2 runs)\): wall ([\d.]+) s; sum of pure training \+ evaluation \(test and validation\) ([\d.]+) s; "
                     r"\*\*ratio ([\d.]+)\*\*", text)
    assert head, text
    wall, pure, ratio = map(float, head.groups()[1:])
    assert 0 < pure < wall <= outside and ratio > 1
    parts = {k: float(v) for k, v in re.findall(r"^\| ([^|]+?)\s+\| ([-\d.]+)\s+\|", text, re.M)}
    assert set(parts) == {"start-up: imports until the first run's process runs",
                          "data + base model loading (sum over runs)",
                          "method set-up: accelerator, wrapping, loaders (sum)", "artifact saving (sum)",
                          "rest of each run: metrics, record (sum)", "process isolation after the first run (sum)",
                          "report with figures", "exit", "everything else (between runs, printing)"}, text
    # every named part was measured (each from its own clock or record field), none is empty
    assert all(v > 0 for k, v in parts.items() if not k.startswith("everything else")), text
    # and together they account for the overhead: the remainder (wall - pure - the named parts)
    # is printing between runs only
    assert abs(parts["everything else (between runs, printing)"]) < 1.0, text


def test_suite_overhead_names_a_bad_suite_before_timing_anything(tmp_path):
    import pytest

    from peft_bench.studies.overhead import suite_overhead
    from peft_bench.core.suite import SuiteError

    with pytest.raises(SuiteError, match="no suite file or built-in suite named 'nosuch'.*Built-in suites: .*quick"):
        suite_overhead("nosuch", log=lambda m: None)
