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
