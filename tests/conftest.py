"""Shared helpers: tiny random models on the synthetic `dummy` task, trained by the real loop."""

from __future__ import annotations

import gc
import os
import warnings

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=FutureWarning)


def tiny_spec(method: str, model: str = "tiny-bert", task: str = "dummy", method_config=None, **train):
    from peft_bench.core.config import TrainConfig
    from peft_bench.core.spec import RunSpec

    cfg = dict(steps=40, batch_size=16, n_train=400, n_test=64, eval_batch_size=32, max_length=64, num_threads=2,
               n_validation=64, eval_points=1)
    cfg.update(train)
    return RunSpec(model=model, task=task, method=method, method_config=method_config or {},
                   train=TrainConfig(**cfg)).resolve()


@pytest.fixture(scope="session", autouse=True)
def _plugins():
    from peft_bench.core.registry import load_builtin_plugins

    load_builtin_plugins()
    # the imported libraries (millions of objects) are out of the collector's reach for the session,
    # as `execute` does for one run: each full collection (release_memory) then walks only what the
    # tests made, ~0.3 s -> a few ms
    gc.freeze()
