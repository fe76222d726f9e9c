"""Shared helpers: tiny random models on the synthetic `dummy` task, trained by the real loop."""

from __future__ import annotations

import gc
import os
import warnings

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=FutureWarning)


from peft_bench.testing import tiny_spec  # noqa: E402,F401  (the contract kit's: tests import it from here)


@pytest.fixture(scope="session", autouse=True)
def _plugins():
    from peft_bench.core.registry import load_builtin_plugins

    load_builtin_plugins()
    # the imported libraries (millions of objects) are out of the collector's reach for the session,
    # as `execute` does for one run: each full collection (release_memory) then walks only what the
    # tests made, ~0.3 s -> a few ms
    gc.freeze()
