"""The forkserver every run is forked from (light module: no torch import here).

``context()`` is the multiprocessing context the executor forks runs from; its server imports
``peft_bench.execution.preload`` (torch, transformers, peft, the plugins, the metric modules, and the code of the
models named in ``$PEFT_BENCH_PRELOAD_MODELS``) once. ``start_early`` starts it before the caller
imports anything heavy itself, so the two sets of imports overlap instead of adding up.

The server must never run a torch op: measured here, a child forked after its parent ran a
2-thread matmul hangs in its first parallel op (GNU OpenMP's thread pool does not survive a fork).
So base weights cannot be preloaded here; only imports and pure-Python tables can.
(`python -m peft_bench.execution.server` reruns that probe.)
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tomllib
from pathlib import Path

from peft_bench.core.paths import PACKAGE_DIR

PRELOAD = ["peft_bench.execution.preload", "peft_bench.execution._server_exit"]
MODELS_ENV = "PEFT_BENCH_PRELOAD_MODELS"


def context():
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def preload_models(models) -> None:
    """Name the models whose code the server imports (only before it starts; later calls are moot)."""
    os.environ.setdefault(MODELS_ENV, ",".join(sorted(set(models))))


def start_early(suite: str) -> None:
    """Start the server for a suite (a built-in name or a .toml path) now, reading only the suite's
    ``models`` with tomllib. Any problem is left for the full suite validation to report."""
    from multiprocessing import forkserver

    path = Path(suite) if suite.endswith(".toml") else PACKAGE_DIR / "suites" / f"{suite}.toml"
    try:
        models = tomllib.loads(path.read_text()).get("models", [])
        if isinstance(models, list):
            preload_models(str(m) for m in models)
    except (OSError, tomllib.TOMLDecodeError):
        pass
    context()
    forkserver.ensure_running()


def _probe_child(queue) -> None:
    import time

    import torch

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    (torch.randn(2000, 2000) @ torch.randn(2000, 2000)).sum().item()
    queue.put(time.perf_counter() - t0)


def probe_fork_after_torch(timeout_s: float = 60.0) -> str:
    """Why the server never runs a torch op: run a 2-thread matmul here, ``fork``, run one in the
    child. ``python -m peft_bench.execution.server`` prints the outcome (here: the child hangs)."""
    import torch

    torch.set_num_threads(2)
    (torch.randn(2000, 2000) @ torch.randn(2000, 2000)).sum().item()
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_probe_child, args=(queue,))
    proc.start()
    proc.join(timeout_s)
    if proc.is_alive():
        proc.kill()
        return f"a child forked after a 2-thread torch matmul hangs: still running after {timeout_s:.0f} s"
    return f"a child forked after a 2-thread torch matmul ran its own in {queue.get():.2f} s"


if __name__ == "__main__":
    print(probe_fork_after_torch())
