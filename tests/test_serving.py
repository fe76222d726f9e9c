"""Serving saved artifacts: switch timing, throughput, named errors. (Mixed-batch equality and
refusals are part of every method's contract: tests/test_methods.py.)"""

from __future__ import annotations

import pytest
import torch

from peft_bench.assets import models
from peft_bench.testing import rows_of_different_lengths, three_task_server


def test_unknown_adapter_in_a_mixed_batch_is_named(tmp_path):
    run, method, served = three_task_server("prompt_tuning", "tiny-llama", tmp_path)
    ids, mask, _ = rows_of_different_lengths(run)
    with pytest.raises(KeyError, match=r"unknown adapter\(s\) \['zzz'\]; loaded: \['a', 'b', 'c'\]"):
        method.forward_mixed(served, ids, mask, ["a", "zzz", "c", "a", "b", "c"])


@pytest.mark.parametrize("method_name", ["prompt_tuning", "prefix_tuning"])
def test_the_bank_is_built_once_and_rebuilt_when_a_prompt_changes(method_name, tmp_path):
    """Mixed batches gather rows from a bank of the loaded prompts (prefixes) built once; a prompt
    changed in place is seen by the next batch (each row equals it served alone), and reloading a
    name drops its entry."""
    from peft_bench.interface.peft import BANK

    run, method, served = three_task_server(method_name, "tiny-llama", tmp_path)
    ids, mask, _ = rows_of_different_lengths(run)
    names = ["a", "b", "c", "a", "b", "c"]
    with torch.inference_mode():
        first = method.forward_mixed(served, ids, mask, names).logits
        kept = {n: getattr(served, BANK)[n][1] for n in "abc"}
        again = method.forward_mixed(served, ids, mask, names).logits
        assert all(getattr(served, BANK)[n][1] is kept[n] for n in "abc") and torch.equal(first, again)
    with torch.no_grad():
        next(served.prompt_encoder["b"].parameters()).add_(0.5)  # task b's prompt changes in place
    with torch.inference_mode():
        mixed = method.forward_mixed(served, ids, mask, names).logits
        assert getattr(served, BANK)["b"][1] is not kept["b"] and getattr(served, BANK)["a"][1] is kept["a"]
        method.activate(served, "b")
        alone = served(input_ids=ids[1:2], attention_mask=mask[1:2]).logits
    n = int(mask[1].sum())
    torch.testing.assert_close(mixed[1, -ids.shape[1]:][:n], alone[0, -ids.shape[1]:][:n], atol=1e-5, rtol=0)
    assert not torch.allclose(mixed[1], first[1])
    method.unload(served, "c")
    assert "c" not in getattr(served, BANK)


def _same_rows(method, served, ids, mask, names, mixed):
    """Each row of ``mixed`` equals that row served alone by its own adapter (all positions of a
    causal LM; right padding)."""
    for i, name in enumerate(names):
        n = int(mask[i].sum())
        method.activate(served, name)
        alone = served(input_ids=ids[i:i + 1, :n], attention_mask=mask[i:i + 1, :n]).logits
        # the input's positions (virtual tokens come first), right-padded in the batch
        torch.testing.assert_close(mixed[i, -ids.shape[1]:][:n], alone[0, -n:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("method_name", ["lora", "bottleneck_adapter", "prompt_tuning", "prefix_tuning"])
def test_mixed_batch_banks_are_the_adapters_storage_and_follow_changes(method_name, tmp_path):
    """A mixed batch gathers each row's adapter from banks built once: the first batch adds no
    second copy of the adapters (live tensors grow by < 10% of their bytes: the weights are
    re-pointed into the banks, or the banks are views of the weights), an in-place change of one task's weights is served at once, and a
    name loaded again from other weights is seen; every row equals it served alone (and the
    library's own path, where there is one)."""
    import re

    from peft_bench.serving.scale import live_tensor_bytes

    run, method, served = three_task_server(method_name, "tiny-llama", tmp_path)
    ids, mask, _ = rows_of_different_lengths(run)
    names = ["a", "b", "c", "b", "a", "c"]
    adapters = [p for n, p in served.named_parameters() if re.search(r"\.[abc]\.", n)]
    before = live_tensor_bytes(torch.device("cpu"))
    with torch.inference_mode():
        method.forward_mixed(served, ids, mask, names)  # builds the banks
    grown = live_tensor_bytes(torch.device("cpu")) - before
    assert grown < 0.1 * sum(p.nbytes for p in adapters), f"the banks copied the adapters: +{grown} bytes"
    with torch.inference_mode():
        mixed = method.forward_mixed(served, ids, mask, names).logits
        if method.forward_mixed_reference is not None:
            torch.testing.assert_close(mixed, method.forward_mixed_reference(served, ids, mask, names).logits,
                                       atol=1e-5, rtol=0)
        _same_rows(method, served, ids, mask, names, mixed)
    with torch.no_grad():
        [p for n, p in served.named_parameters() if re.search(r"\.b\.", n)][-1].add_(0.5)  # task b, in place
    with torch.inference_mode():
        changed = method.forward_mixed(served, ids, mask, names).logits
        assert not torch.allclose(changed[1], mixed[1]) and torch.equal(changed[0], mixed[0])
        _same_rows(method, served, ids, mask, names, changed)
    served = method.unload(served, "c")
    served = method.load(served, tmp_path / "a", run.ctx, "c")  # c now holds a's weights
    with torch.inference_mode():
        _same_rows(method, served, ids, mask, names, method.forward_mixed(served, ids, mask, names).logits)


@pytest.mark.parametrize("method_name", ["prompt_tuning", "prefix_tuning"])
def test_a_prompt_unloads_from_an_encoder_serving_three_tasks(method_name, tmp_path):
    """peft (0.21) cannot delete a prompt adapter beside two others on an encoder (its task-head
    copies refuse several new active adapters); ``unload`` can, and the rest still serve."""
    run, method, served = three_task_server(method_name, "tiny-bert", tmp_path)
    served = method.unload(served, "c")
    assert sorted(served.peft_config) == ["a", "b"]
    ids, mask, _ = rows_of_different_lengths(run)
    names = ["a", "b", "a", "b", "a", "b"]
    with torch.inference_mode():
        mixed = method.forward_mixed(served, ids, mask, names).logits
        for i, name in enumerate(names):
            n = int(mask[i].sum())
            method.activate(served, name)
            alone = served(input_ids=ids[i:i + 1, :n], attention_mask=mask[i:i + 1, :n]).logits
            torch.testing.assert_close(mixed[i], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("method_name", ["lora", "bottleneck_adapter"])
def test_mixed_batches_with_gradients_reach_the_adapters_own_weights(method_name, tmp_path):
    """The gathered banks serve inference only: with gradients recorded, a mixed batch goes through
    the adapters' own modules (peft's loop, the routed loop), so its loss reaches their weights."""
    run, method, served = three_task_server(method_name, "tiny-llama", tmp_path)
    ids, mask, _ = rows_of_different_lengths(run)
    for p in served.parameters():
        p.requires_grad_(False)
    b = [p for n, p in served.named_parameters() if ".b." in n]
    for p in b:
        p.requires_grad_(True)
    with torch.inference_mode():
        method.forward_mixed(served, ids, mask, ["a", "b", "c", "a", "b", "c"])  # banks built for serving
    method.forward_mixed(served, ids, mask, ["a", "b", "c", "a", "b", "c"]).logits.sum().backward()
    assert b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in b)


def test_lora_adapters_of_different_ranks_take_peft_s_loop(tmp_path):
    """A bank holds one rank: adapters of different ranks are served by peft's loop, still per row."""
    from peft_bench.engine.prepare import prepare
    from peft_bench.interface.lora_bank import _bank
    from peft_bench.testing import tiny_spec

    run, method, served = three_task_server("lora", "tiny-llama", tmp_path)
    other = prepare(tiny_spec("lora", "tiny-llama", method_config={"r": 4}))
    with torch.no_grad():
        for p in other.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    other.method.save(other.model, tmp_path / "r4")
    served = method.load(served, tmp_path / "r4", run.ctx, "r4")
    assert _bank(served) is None
    ids, mask, _ = rows_of_different_lengths(run)
    names = ["a", "r4", "c", "r4", "a", "b"]
    with torch.inference_mode():
        _same_rows(method, served, ids, mask, names, method.forward_mixed(served, ids, mask, names).logits)


FORWARD_S = 0.01  # every forward of the base model is made this much slower (a real sleep, in a hook)


@pytest.fixture
def slow_forward():
    """A global forward hook that sleeps in every forward of a Llama model: a switch timed with a
    forward inside it cannot stay under FORWARD_S."""
    import time

    def hook(module, args):
        if type(module).__name__ == "LlamaForCausalLM":
            time.sleep(FORWARD_S)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    yield
    handle.remove()


@pytest.mark.slow
@pytest.mark.parametrize("method_name", ["prompt_tuning", "lora", "bottleneck_adapter", "prefix_tuning", "full_finetune"])
def test_switch_measurement_and_throughput_on_a_tiny_model(method_name, tmp_path, slow_forward):
    from peft_bench.serving.switching import Batch, measure_switch, measure_throughput

    run, method, _ = three_task_server(method_name, "tiny-llama", tmp_path)
    ids, mask, _ = rows_of_different_lengths(run, n=4)
    batches = {t: Batch(ids, mask) for t in "abc"}
    mspec = models.resolve("tiny-llama")
    res = measure_switch(method, run.ctx, lambda: models.load(mspec, run.task.num_labels).model,
                         {t: tmp_path / t for t in "abc"}, batches, torch.device("cpu"), repeats=5, warmup=1)
    for key in ("warm_switch", "cold_switch", "forward", "warm_first_output", "cold_first_output"):
        assert res[key]["n"] == 5 * 6, (key, res[key])  # 5 repeats x 6 ordered pairs of 3 tasks
    # the switch is timed alone: no forward pass inside it; the forward and first output beside it
    assert res["forward"]["median_s"] >= FORWARD_S
    assert res["warm_switch"]["median_s"] < FORWARD_S / 2, res["warm_switch"]
    assert res["warm_first_output"]["median_s"] >= res["warm_switch"]["median_s"] + FORWARD_S
    assert res["cold_first_output"]["median_s"] >= res["cold_switch"]["median_s"] + FORWARD_S
    assert res["cold_switch"]["median_s"] > res["warm_switch"]["median_s"]  # loading from disk costs more
    # serving memory holds at least the base weights (every loaded weight is made resident), and
    # full fine-tuning one more full copy per task
    base = sum(p.numel() * p.element_size() for p in models.load(mspec, run.task.num_labels).model.parameters())
    assert res["base_weight_bytes"] == base
    # (an RSS difference is exact only to the allocator's granularity: here, with 0.4 MiB models, up
    # to ~40 KiB was seen either way; reports/quick shows the MiniLM figures, well above the weights)
    copies = 1 + 3 if method_name == "full_finetune" else 1
    assert res["serving_mem_bytes"] >= copies * base - 2**20, (res["serving_mem_bytes"], base)
    assert res["page_cache"] == "warm"
    stream = [(t, run.test_dl.dataset[i]) for i in range(12) for t in "abc"]
    tp = measure_throughput(method, res["model"], stream, run.ctx.tokenizer.pad, 6, torch.device("cpu"), repeats=1)
    assert tp["single_task_examples_per_s"] > 0 and tp["grouped_examples_per_s"] > 0
    if method_name == "full_finetune":  # one forward runs one full set of weights
        assert tp["mixed_examples_per_s"] is None and "mixed_unsupported" in tp
    else:
        assert tp["mixed_examples_per_s"] > 0 and tp["mixed_over_single"] > 0


@pytest.mark.parametrize("n", [1, 2, 3, 5, 9, 10, 11, 19, 20, 40, 41])
def test_percentile_is_the_nearest_rank(n):
    """Against numpy's inverted-CDF percentile (the nearest-rank definition)."""
    import numpy as np

    from peft_bench.serving.switching import percentile

    xs = [float(x) for x in np.random.default_rng(n).permutation(n) * 1.5]
    for q in (50, 90, 99, 100):
        assert percentile(xs, q) == float(np.percentile(xs, q, method="inverted_cdf")), (n, q)


def test_task_streams_follow_their_popularity_law():
    from peft_bench.serving.scale import task_stream

    examples = [{"input_ids": [i]} for i in range(10)]
    zipf = [t for t, _ in task_stream(16, examples, "zipf", 4000)]
    uniform = [t for t, _ in task_stream(16, examples, "uniform", 4000)]
    share = lambda s, t: s.count(t) / len(s)  # noqa: E731
    h16 = sum(1 / k for k in range(1, 17))
    assert abs(share(zipf, "t00") - 1 / h16) < 0.03 and abs(share(zipf, "t15") - 1 / 16 / h16) < 0.01
    assert all(abs(share(uniform, f"t{k:02d}") - 1 / 16) < 0.02 for k in range(16))
    assert task_stream(16, examples, "zipf", 50) == task_stream(16, examples, "zipf", 50)  # seeded
    with pytest.raises(ValueError, match="unknown popularity law 'pareto'; valid: uniform, zipf"):
        task_stream(4, examples, "pareto", 10)


@pytest.mark.slow
def test_serve_bench_writes_rows_for_every_n_and_law(tmp_path, capsys):
    """The command end to end on a tiny model: a row per (method, N, law) with the three serving
    modes; full fine-tuning has no mixed path and its latency is the grouped path's; live tensors
    per task are one full model for full fine-tuning and one prompt for prompt tuning."""
    import json

    from peft_bench.cli import main

    assert main(["serve-bench", "--methods", "prompt_tuning,full_finetune", "--model", "tiny-llama,tiny-bert",
                 "--task", "dummy", "--ns", "1,3", "--requests", "24", "--batch-size", "6", "--repeats", "1",
                 "--out", str(tmp_path)]) == 0
    rows = [json.loads(x) for x in (tmp_path / "serving.jsonl").read_text().splitlines()]
    assert [(r["model"], r["method"], r["n_tasks"], r["law"]) for r in rows] == [
        (model, m, n, law) for model in ("tiny-llama", "tiny-bert") for m in ("prompt_tuning", "full_finetune")
        for n in (1, 3) for law in ("uniform", "zipf")]
    assert all(r["python_bytes_per_load"] > 0 for r in rows)  # an encoder's task heads unloaded and loaded again
    rows = [r for r in rows if r["model"] == "tiny-llama"]
    pt = [r for r in rows if r["method"] == "prompt_tuning"]
    assert all(r["mixed_over_single"] > 0 and r["latency_path"] == "mixed" for r in pt)
    ft = [r for r in rows if r["method"] == "full_finetune"]
    assert all(r["mixed_over_single"] is None and r["latency_path"] == "grouped" for r in ft)
    # memory per task against independent counts: a full model's weights, a prompt's
    base = models.load(models.resolve("tiny-llama"), 2).model
    weights = sum(p.nbytes for p in base.parameters())
    assert ft[0]["tensor_per_task_bytes"] is None and abs(ft[-1]["tensor_per_task_bytes"] / weights - 1) < 0.1
    prompt = 20 * base.config.hidden_size * 4  # num_virtual_tokens x hidden x fp32, one copy (the bank is its storage)
    assert pt[0]["artifact_tensor_bytes"] == prompt and ft[0]["artifact_tensor_bytes"] == weights
    assert abs(pt[-1]["tensor_per_task_bytes"] / prompt - 1) < 0.1, (pt[-1]["tensor_per_task_bytes"], prompt)
    assert all(r["resident_per_task_bytes"] is not None for r in pt[2:])
    assert [r["distinct_tasks"] for r in pt] == [1, 1, 3, 3]
    md = (tmp_path / "README.md").read_text()
    assert "### tiny-llama / prompt_tuning" in md and "### tiny-llama / full_finetune" in md
    assert (tmp_path / "throughput-tiny-llama.png").is_file()
    # measured pairs are kept: the same command measures nothing again; other settings are refused
    before = (tmp_path / "serving.jsonl").read_bytes()
    assert main(["serve-bench", "--methods", "prompt_tuning", "--model", "tiny-llama", "--task", "dummy",
                 "--ns", "1,3", "--requests", "24", "--batch-size", "6", "--repeats", "1", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "serving.jsonl").read_bytes() == before
    assert main(["serve-bench", "--methods", "lora", "--model", "tiny-llama", "--task", "dummy", "--ns", "1,3",
                 "--requests", "30", "--batch-size", "6", "--repeats", "1", "--out", str(tmp_path)]) == 2
    assert "holds rows of tiny-llama measured with requests = 24, not 30: use another --out" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--ns", "1,x"], "--ns must be comma-separated integers, got '1,x'"),
    (["--ns", "0,4"], "--ns must be at least 1, got '0,4'"),
    (["--artifact-budget-gib", "0"], "--artifact-budget-gib must be positive, got 0.0"),
])
def test_serve_bench_refuses_bad_settings_before_measuring(argv, message, tmp_path):
    from peft_bench.cli import main

    with pytest.raises(SystemExit, match=message):
        main(["serve-bench", "--out", str(tmp_path), *argv])
    assert not (tmp_path / "serving.jsonl").exists()


def test_a_page_is_not_rewritten_from_rows_of_an_older_serve_bench(tmp_path, capsys):
    from peft_bench.cli import main

    (tmp_path / "serving.jsonl").write_text('{"method": "lora", "model": "minilm", "n_tasks": 1}\n')
    assert main(["serve-bench", "--report", str(tmp_path)]) == 2
    assert "has rows without ['artifact_tensor_bytes', 'python_bytes_per_load', 'repeats', 'resident_bytes', " \
           "'tensor_per_task_bytes']: measured by an older serve-bench" in capsys.readouterr().err
