"""Runs launched on several processes (``accelerate launch``, ``torchrun``): data parallelism (DDP).

The process group is accelerate's (``PartialState``: NCCL on GPUs, gloo on CPUs); this module only
holds the few helpers the engine and the suite runner share, so that a multi-process run means the same as a
single-process one:

- every process runs the same suite in the same order, in-process (no child per run: the process
  group lives in the launched processes), and only the main process writes records and reports;
- the batch of a step is global (``split_batches``): each of P processes gets batch_size / P of
  the same examples a single process would have used, so a step sees the same data;
- metrics are gathered: accuracy over the whole test split, losses averaged over processes,
  memory per process with its max, throughput as the global rate.
"""

from __future__ import annotations

import os
from typing import Any


def launched() -> bool:
    """Are we one of several processes of a launch (``WORLD_SIZE`` > 1)?"""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def state():
    """accelerate's process state (initialises the process group once, on the first call)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main() -> bool:
    return not launched() or state().is_main_process


def broadcast(obj: Any) -> Any:
    """The main process's ``obj`` on every process (identity when not launched)."""
    if not launched():
        return obj
    from accelerate.utils import broadcast_object_list

    state()
    return broadcast_object_list([obj], from_process=0)[0]


def per_process(accelerator, value: float | int | None) -> list:
    """``value`` of every process, in process order (``[value]`` for one process)."""
    if accelerator.num_processes == 1 or value is None:
        return [value]
    import torch

    return accelerator.gather(torch.tensor([float(value)], device=accelerator.device)).tolist()


def cpu_threads(num_threads: int) -> int:
    """Torch CPU threads for a run: the configured number, else OMP_NUM_THREADS (what a launcher or
    a Ray task was given), else this process's share of the cores it may use."""
    if num_threads:
        return num_threads
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))
