"""Imported once by the forkserver that forks one child per run: every import paid here is not
paid again by each run (torch, transformers, peft, datasets, evaluate, the plugins)."""

import accelerate  # noqa: F401
import datasets  # noqa: F401
import evaluate  # noqa: F401
import peft  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401

import peft_bench.engine.record  # noqa: F401
from peft_bench.core.registry import load_builtin_plugins

load_builtin_plugins()
from peft_bench.core.registry import METHODS, MODELS, TASKS  # noqa: E402

for _registry in (METHODS, TASKS, MODELS):  # outside plugins too, once; the suite process reports broken ones
    _registry.load_entry_points(warn=False)

import peft_bench.execution.local  # noqa: E402,F401  (children run its functions: the server's copy, not a newer file)
import peft_bench.serving.suite  # noqa: E402,F401  (switch measurements run its functions)

from peft_bench.interface.task import HIGHER_IS_BETTER, load_metric  # noqa: E402

from peft_bench.core.environment import lock_state, package_versions  # noqa: E402

package_versions()
lock_state()

try:  # transformers builds its table of checkpoint conversions on first model load (0.3 s here)
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping  # noqa: E402

    get_checkpoint_conversion_mapping("bert")
except Exception:  # noqa: BLE001 - an optimisation only
    pass

for _name in HIGHER_IS_BETTER:  # `evaluate.load` builds a module per metric: once, here, not per run
    load_metric(_name)

# the models of the suite being run (set by peft_bench.execution.local before the server starts): their
# architecture and tokenizer modules are imported here once instead of in every run
import os  # noqa: E402

from peft_bench.assets import models  # noqa: E402

from peft_bench.execution.server import MODELS_ENV  # noqa: E402

for _model in filter(None, os.environ.get(MODELS_ENV, "").split(",")):
    try:
        models.import_classes(_model)
    except Exception:  # noqa: BLE001 - an optimisation only: the run imports what it needs itself
        pass
