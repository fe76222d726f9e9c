"""Prefix tuning (Li & Liang 2021): trainable key/value prefixes in every attention layer (peft)."""

from __future__ import annotations

from dataclasses import dataclass

from peft import PrefixTuningConfig as PeftPrefixTuningConfig

from peft_bench import ModelContext, PeftMethod, VirtualTokenConfig, opt, prefix_bank_forward, register_method, task_type


@dataclass
class PrefixTuningConfig(VirtualTokenConfig):
    lr: float = opt(1e-3, "peak learning rate (at 1e-2, MiniLM sentiment stayed at the majority class after 120 steps)")
    num_virtual_tokens: int = opt(20, "prefix length per layer")
    projection: bool = opt(True, "reparameterise the prefix through an MLP while training "
                                 "(plain prefixes start far from the base model's loss)")
    encoder_hidden_size: int = opt(256, "hidden size of the projection MLP")


@register_method("prefix_tuning")
class PrefixTuningMethod(PeftMethod):
    config_cls = PrefixTuningConfig
    description = "trainable key/value prefixes in every layer (peft PrefixTuning), optional MLP projection"

    def peft_config(self, model, ctx: ModelContext):
        c = self.config
        return PeftPrefixTuningConfig(task_type=task_type(ctx), num_virtual_tokens=c.num_virtual_tokens,
                                      prefix_projection=c.projection,
                                      encoder_hidden_size=c.encoder_hidden_size)

    def forward_mixed(self, model, input_ids, attention_mask, adapter_names):
        return prefix_bank_forward(model, input_ids, attention_mask, adapter_names)
