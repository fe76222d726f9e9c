"""LoRA (Hu et al. 2021): trainable low-rank updates of the attention projections (peft)."""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig as PeftLoraConfig

from peft_bench import MethodConfig, ModelContext, PeftMethod, check, opt, register_method, task_type


@dataclass
class LoraConfig(MethodConfig):
    lr: float = opt(1e-3, "peak learning rate")
    r: int = opt(8, "rank of the update")
    alpha: float = opt(16.0, "scaling numerator (update scaled by alpha / r)")
    dropout: float = opt(0.0, "dropout on the LoRA input")
    target_modules: list[str] = opt([], "module names to adapt; empty = peft's default for the architecture")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.r > 0, "r", "a positive integer", self.r)
        check(self.alpha > 0, "alpha", "positive", self.alpha)
        check(0 <= self.dropout < 1, "dropout", "in [0, 1)", self.dropout)


@register_method("lora")
class LoraMethod(PeftMethod):
    config_cls = LoraConfig
    description = "low-rank updates of attention projections (peft LoRA)"

    def peft_config(self, model, ctx: ModelContext):
        c = self.config
        return PeftLoraConfig(task_type=task_type(ctx), r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout,
                              target_modules=list(c.target_modules) or None)

    def forward_mixed(self, model, input_ids, attention_mask, adapter_names):
        # peft routes LoRA per row exactly (inference only), task heads included
        return model(input_ids=input_ids, attention_mask=attention_mask, adapter_names=list(adapter_names))
