"""Shared life-cycle of the methods that peft implements (prompt, prefix, P-tuning, LoRA)."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

from peft import PeftConfig, PeftModel, TaskType, get_peft_model
from torch import nn

from bench.config import check, opt
from bench.method import Method, MethodConfig, ModelContext, assert_safetensors_only


@dataclass
class VirtualTokenConfig(MethodConfig):
    """Shared by the prompt-learning methods (prompt, prefix and P-tuning)."""

    num_virtual_tokens: int = opt(20, "number of virtual tokens")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(1 <= self.num_virtual_tokens <= 1000, "num_virtual_tokens", "in [1, 1000]", self.num_virtual_tokens)
        hidden = getattr(self, "encoder_hidden_size", 1)
        check(hidden > 0, "encoder_hidden_size", "positive", hidden)


def task_type(ctx: ModelContext) -> TaskType:
    return TaskType.CAUSAL_LM if ctx.kind == "causal" else TaskType.SEQ_CLS


class PeftMethod(Method):
    """A method whose artifact is a peft adapter; subclasses only build the peft config."""

    @abc.abstractmethod
    def peft_config(self, model: nn.Module, ctx: ModelContext) -> PeftConfig:
        """The peft config for this method on ``model`` (task type from ``task_type(ctx)``)."""

    def init_adapter(self, model: PeftModel, ctx: ModelContext) -> None:
        """Hook to initialise the fresh adapter's weights (default: peft's own init)."""

    def prepare(self, model: nn.Module, ctx: ModelContext) -> nn.Module:
        peft_model = get_peft_model(model, self.peft_config(model, ctx))
        self.init_adapter(peft_model, ctx)
        return peft_model

    def save(self, model: nn.Module, path: Path) -> None:
        model.save_pretrained(str(path), safe_serialization=True,
                              selected_adapters=[model.active_adapter])
        # peft writes a non-default adapter into a sub-folder: keep one artifact = one folder
        sub = Path(path) / model.active_adapter
        if model.active_adapter != "default" and sub.is_dir():
            for f in sub.iterdir():
                f.replace(Path(path) / f.name)
            sub.rmdir()

    def load(self, model: nn.Module, path: Path, ctx: ModelContext, name: str) -> nn.Module:
        assert_safetensors_only(path)
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        else:
            model = PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=False)
        return self.activate(model, name)

    def activate(self, model: nn.Module, name: str) -> nn.Module:
        model.set_adapter(name)
        return model
