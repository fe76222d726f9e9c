"""Measurement primitives measure what they claim."""

from __future__ import annotations

import torch

from bench.measurement import MemoryMeter, StepTimer, current_rss, release_memory


def test_memory_meter_sees_a_transient_peak_and_each_window_starts_fresh():
    cpu = torch.device("cpu")
    release_memory()
    base = current_rss()
    with MemoryMeter(cpu, base) as first:
        x = torch.ones(64 * 2**20 // 4 * 4)  # 256 MiB, touched, then freed inside the window
        del x
    release_memory()
    with MemoryMeter(cpu, current_rss()) as second:
        y = torch.ones(16 * 2**20 // 4)  # 16 MiB
        del y
    assert first.kind == second.kind and first.kind in ("cpu_rss_peak", "cpu_rss_sampled")
    assert first.peak_bytes >= 240 * 2**20
    assert second.peak_bytes < 100 * 2**20  # the 256 MiB peak of the first window is not carried over


def test_step_timer_counts_steps_and_examples():
    with StepTimer(torch.device("cpu")) as t:
        for _ in range(3):
            torch.ones(1000).sum()
            t.step(8)
    assert len(t.step_times) == 3 and t.examples == 24 and t.total_s >= sum(t.step_times) * 0.99
    assert t.median_step_s is not None and t.examples_per_s > 0


def test_step_timer_does_not_count_time_away_between_steps():
    """A loop driven step by step (``runner.train_steps``) restarts its step clock on ``resume``:
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
