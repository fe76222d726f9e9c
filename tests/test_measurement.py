"""Measurement primitives measure what they claim."""

from __future__ import annotations

import torch

from peft_bench.engine.measurement import MemoryBaseline, MemoryMeter, StepTimer, current_rss, release_memory


def test_memory_meter_sees_a_transient_peak_and_each_window_starts_fresh():
    cpu = torch.device("cpu")
    release_memory()
    with MemoryMeter(cpu, MemoryBaseline.take(cpu)) as first:
        x = torch.ones(64 * 2**20 // 4 * 4)  # 256 MiB, touched, then freed inside the window
        del x
    release_memory()
    with MemoryMeter(cpu, MemoryBaseline.take(cpu)) as second:
        y = torch.ones(16 * 2**20 // 4)  # 16 MiB
        del y
    assert first.kind == second.kind and first.kind in ("cpu_rss_peak", "cpu_rss_sampled")
    assert first.peak_bytes >= 240 * 2**20
    assert second.peak_bytes < 100 * 2**20  # the 256 MiB peak of the first window is not carried over


def test_both_windows_subtract_the_same_baseline():
    """A window that starts above the baseline still counts from the baseline: what was allocated
    before it (and kept) is inside its peak."""
    cpu = torch.device("cpu")
    release_memory()
    base = MemoryBaseline.take(cpu)
    kept = torch.ones(48 * 2**20 // 4)  # 48 MiB allocated between the baseline and the window
    with MemoryMeter(cpu, base) as window:
        pass
    with MemoryMeter(cpu) as own_start:  # no baseline given: the window's own start
        pass
    assert window.peak_bytes >= 44 * 2**20 and own_start.peak_bytes < 16 * 2**20
    del kept


def _big_encoder(path, vocab=40_000, hidden=256):
    """A BERT whose weights are mostly one large embedding (40k x 256 fp32 = 39 MiB), saved as
    safetensors: loaded back, its weights are memory-mapped and most inputs touch few rows."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=512, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(path, safe_serialization=True)
    return sum(p.numel() * p.element_size() for p in BertModel(cfg).parameters())


def test_loaded_weights_are_resident_so_the_baseline_holds_them(tmp_path):
    """``from_pretrained`` memory-maps safetensors lazily; ``models.load_model`` pages every weight
    in, so RSS right after loading (the baseline) already holds all of them."""
    from peft_bench.assets import models
    from peft_bench.engine.measurement import rss_parts

    weight_bytes = _big_encoder(tmp_path / "big")
    spec = models.ModelSpec(name="big", kind="encoder", description="", source=str(tmp_path / "big"))
    release_memory()
    before = current_rss()
    model = models.load_model(spec, str(tmp_path / "big"), num_labels=2)
    grown = current_rss() - before
    assert grown >= 0.9 * weight_bytes, (grown, weight_bytes)
    assert rss_parts().keys() >= {"RssAnon", "RssFile"}
    del model


def test_first_step_is_left_out_of_the_median_step_time():
    import time

    with StepTimer(torch.device("cpu")) as t:
        time.sleep(0.3)  # a slow first step (allocator warm-up, lazy init)
        t.step(1)
        t.step(1)  # with the first step counted, the median of the two would be >= 0.15 s
    assert t.step_times[0] >= 0.3 and t.median_step_s < 0.05


def test_step_timer_counts_steps_and_examples():
    with StepTimer(torch.device("cpu")) as t:
        for _ in range(3):
            torch.ones(1000).sum()
            t.step(8)
    assert len(t.step_times) == 3 and t.examples == 24 and t.total_s >= sum(t.step_times) * 0.99
    assert t.median_step_s is not None and t.examples_per_s > 0


def test_step_timer_does_not_count_time_away_between_steps():
    """A loop driven step by step (``engine.loop.train_steps``) restarts its step clock on ``resume``:
    what the caller did in between is in the block's total, not in the next step."""
    import time

    with StepTimer(torch.device("cpu")) as t:
        t.step(1)
        time.sleep(0.3)  # the caller's work between two steps
        t.resume()
        t.step(1)
        time.sleep(0.3)  # without resume: counted in the next step
        t.step(1)
    assert t.step_times[1] < 0.1 <= 0.3 <= t.step_times[2]
    assert t.total_s >= 0.6
