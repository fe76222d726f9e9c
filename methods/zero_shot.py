"""Zero-shot baseline: the untrained base model (nothing trains, nothing is stored).

For causal LMs this is rank classification with the task's label words before any training. For
encoders the classification head is untrained, so the report's baseline there is the majority class.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from peft_bench import Method, ModelContext, freeze, register_method


@register_method("zero_shot")
class ZeroShotMethod(Method):
    description = "baseline: the frozen base model, untrained (0 steps)"
    trains = False

    def prepare(self, model: nn.Module, ctx: ModelContext) -> nn.Module:
        freeze(model)
        return model

    def save(self, model: nn.Module, path: Path) -> None:
        (Path(path) / "zero_shot.json").write_text(json.dumps({"method": "zero_shot"}))

    def load(self, model: nn.Module, path: Path, ctx: ModelContext, name: str) -> nn.Module:
        return model

    def activate(self, model: nn.Module, name: str) -> nn.Module:
        return model
