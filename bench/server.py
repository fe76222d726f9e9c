"""The forkserver every run is forked from (light module: no torch import here).

``context()`` is the multiprocessing context the executor forks runs from; its server imports
``bench.preload`` (torch, transformers, peft, the plugins, the metric modules, and the code of the
models named in ``$PEFT_BENCH_PRELOAD_MODELS``) once. ``start_early`` starts it before the caller
imports anything heavy itself, so the two sets of imports overlap instead of adding up.

The server must never run a torch op: measured here, a child forked after its parent ran a
2-thread matmul hangs in its first parallel op (GNU OpenMP's thread pool does not survive a fork).
So base weights cannot be preloaded here; only imports and pure-Python tables can.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tomllib
from pathlib import Path

PRELOAD = ["bench.preload"]
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

    path = Path(suite) if suite.endswith(".toml") else Path(__file__).parent / "suites" / f"{suite}.toml"
    try:
        models = tomllib.loads(path.read_text()).get("models", [])
        if isinstance(models, list):
            preload_models(str(m) for m in models)
    except (OSError, tomllib.TOMLDecodeError):
        pass
    context()
    forkserver.ensure_running()
