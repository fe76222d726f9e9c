"""Full fine-tuning: every weight trains; the artifact is the whole model.

Several tasks are served by holding several full copies (``ModelBank``): that is what switching
costs for this method, and the memory of each extra copy is what the switch measurements record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from peft_bench import (
    Method, MethodConfig, MixedBatchUnsupported, ModelContext, UnknownName, assert_safetensors_only, opt,
    register_method,
)


@dataclass
class FullFinetuneConfig(MethodConfig):
    lr: float = opt(5e-5, "peak learning rate (all weights)")


class ModelBank(nn.Module):
    """Full model copies by name, one active; forward goes to the active copy."""

    def __init__(self) -> None:
        super().__init__()
        self.models = nn.ModuleDict()
        self.active = ""

    def forward(self, *args, **kwargs):
        return self.models[self.active](*args, **kwargs)


@register_method("full_finetune")
class FullFinetuneMethod(Method):
    config_cls = FullFinetuneConfig
    description = "all weights trainable; stores the whole model"

    def prepare(self, model: nn.Module, ctx: ModelContext) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save(self, model: nn.Module, path: Path) -> None:
        if isinstance(model, ModelBank):
            model = model.models[model.active]
        model.save_pretrained(str(path), safe_serialization=True)

    def load(self, model: nn.Module, path: Path, ctx: ModelContext, name: str) -> nn.Module:
        assert_safetensors_only(path)
        bank = model if isinstance(model, ModelBank) else ModelBank()
        copy = ctx.reload(str(path))
        copy.eval()
        for p in copy.parameters():
            p.requires_grad_(False)
        bank.models[name] = copy
        return self.activate(bank, name)

    def activate(self, model: nn.Module, name: str) -> nn.Module:
        if name not in model.models:
            raise UnknownName(f"no full model loaded under {name!r}; loaded: {sorted(model.models)}.")
        model.active = name
        return model

    def unload(self, model: nn.Module, name: str) -> nn.Module:
        del model.models[name]
        return model

    def forward_mixed(self, model, input_ids, attention_mask, adapter_names):
        raise MixedBatchUnsupported("full_finetune: n/a, one forward pass runs one full set of weights; "
                                    "rows of different tasks need different models.")

    def trainable_parameters(self, model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)


