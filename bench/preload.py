"""Imported once by the forkserver that forks one child per run: every import paid here is not
paid again by each run (torch, transformers, peft, datasets, evaluate, the plugins)."""

import accelerate  # noqa: F401
import datasets  # noqa: F401
import evaluate  # noqa: F401
import peft  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401

import bench.runner  # noqa: F401
from bench.registry import load_builtin_plugins

load_builtin_plugins()

import bench.executor  # noqa: E402,F401  (children run its functions: the server's copy, not a newer file)
import bench.serving  # noqa: E402,F401
