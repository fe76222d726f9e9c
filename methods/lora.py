"""LoRA (Hu et al. 2021): trainable low-rank updates of the attention projections (peft)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from peft import LoraConfig as PeftLoraConfig

from peft_bench import (
    ConfigError, MethodConfig, MixedBatchUnsupported, ModelContext, PeftMethod, check, lora_bank_forward, opt,
    peft_mixed_forward, register_method, task_type,
)


MOVES_BASE = ("pissa", "olora")  # initialisations that subtract the adapter's start from the base weights


@dataclass
class LoraConfig(MethodConfig):
    lr: float = opt(1e-3, "peak learning rate")
    r: int = opt(8, "rank of the update")
    alpha: float = opt(16.0, "scaling numerator (update scaled by alpha / r)")
    dropout: float = opt(0.0, "dropout on the LoRA input")
    target_modules: list[str] = opt([], "module names to adapt; empty = peft's default for the architecture")
    use_dora: bool = opt(False, "DoRA (Liu et al. 2024): a trained magnitude per output, LoRA for the direction")
    use_rslora: bool = opt(False, "rsLoRA (Kalajdzievski 2023): scale the update by alpha / sqrt(r), not alpha / r")
    init: Literal["default", "gaussian", "orthogonal", "pissa", "olora"] = opt(
        "default", "initialisation: default (B = 0), gaussian, orthogonal; pissa (Meng et al. 2024) / olora "
                   "(Buyukakyuz 2024) start from the principal directions of the base weights, which they "
                   "subtract from them: the artifact is converted to a plain LoRA of rank 2r on the untouched base")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.r > 0, "r", "a positive integer", self.r)
        check(self.alpha > 0, "alpha", "positive", self.alpha)
        check(0 <= self.dropout < 1, "dropout", "in [0, 1)", self.dropout)


@register_method("lora")
class LoraMethod(PeftMethod):
    config_cls = LoraConfig
    description = "low-rank updates of attention projections (peft LoRA)"

    @classmethod
    def refusal(cls, kind=None, config=None) -> str:
        if why := super().refusal(kind, config):
            return why
        if kind == "encoder" and config is not None and config.init in MOVES_BASE:
            return (f"lora's init {config.init!r} runs on causal models only here: peft cannot convert it to a "
                    f"plain LoRA when the adapter also stores a classification head")
        return ""

    def peft_config(self, model, ctx: ModelContext):
        c = self.config
        return PeftLoraConfig(task_type=task_type(ctx), r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout,
                              target_modules=list(c.target_modules) or None, use_dora=c.use_dora,
                              use_rslora=c.use_rslora, init_lora_weights=True if c.init == "default" else c.init)

    def prepare(self, model, ctx: ModelContext):
        if why := self.refusal(ctx.kind, self.config):  # (a suite refuses it before anything runs)
            raise ConfigError(why + ".")
        model = super().prepare(model, ctx)
        if self.config.init in MOVES_BASE:  # the adapter as initialised: what `save` converts against
            self._initial = tempfile.TemporaryDirectory(prefix="peft-bench-lora-init-")
            cfg = model.peft_config[model.active_adapter]
            init, cfg.init_lora_weights = cfg.init_lora_weights, True  # (as peft's conversion asks)
            model.save_pretrained(self._initial.name, selected_adapters=[model.active_adapter])
            cfg.init_lora_weights = init
        return model

    def save(self, model, path: Path) -> None:
        initial = getattr(self, "_initial", None)
        if initial is None:
            return super().save(model, path)
        # a plain LoRA (rank 2r) that gives the same model on the original base weights: the
        # artifact loads like any other, and several tasks share one untouched base
        model.save_pretrained(str(path), safe_serialization=True, selected_adapters=[model.active_adapter],
                              path_initial_model_for_weight_conversion=initial.name)

    def forward_mixed(self, model, input_ids, attention_mask, adapter_names):
        if self.config.use_dora:
            raise MixedBatchUnsupported("peft does not route rows to DoRA adapters (\"Cannot pass `adapter_names` "
                                        "when DoRA is enabled\")")
        # each row's update gathered from a bank of the loaded adapters (peft's loop where the bank
        # cannot represent them exactly); task heads routed per row by peft
        return lora_bank_forward(model, input_ids, attention_mask, adapter_names)

    def forward_mixed_reference(self, model, input_ids, attention_mask, adapter_names):
        """peft's own mixed batch (a loop over the batch's adapters in every layer), for comparison."""
        if self.config.use_dora:
            return self.forward_mixed(model, input_ids, attention_mask, adapter_names)  # (refused alike)
        return peft_mixed_forward(model, input_ids, attention_mask, adapter_names)
