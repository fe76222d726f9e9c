"""P-tuning (Liu et al. 2021): virtual tokens produced by a trainable prompt encoder (peft MLP).

The MLP is trained, but the artifact stores only its output (the prompt), as peft saves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from peft import PromptEncoderConfig

from peft_bench import (
    ModelContext, PeftMethod, VirtualTokenConfig, opt, prompt_bank_forward, register_method,
    task_type,
)


@dataclass
class PTuningConfig(VirtualTokenConfig):
    lr: float = opt(1e-2, "peak learning rate")
    num_virtual_tokens: int = opt(20, "number of virtual tokens")
    encoder: Literal["MLP", "LSTM"] = opt("MLP", "prompt encoder architecture")
    encoder_hidden_size: int = opt(128, "hidden size of the prompt encoder")


@register_method("p_tuning")
class PTuningMethod(PeftMethod):
    config_cls = PTuningConfig
    description = "virtual tokens from a trainable MLP prompt encoder (peft P-tuning); stores the prompt"

    def peft_config(self, model, ctx: ModelContext):
        c = self.config
        return PromptEncoderConfig(task_type=task_type(ctx), num_virtual_tokens=c.num_virtual_tokens,
                                   encoder_reparameterization_type=c.encoder,
                                   encoder_hidden_size=c.encoder_hidden_size)

    def forward_mixed(self, model, input_ids, attention_mask, adapter_names):
        return prompt_bank_forward(model, input_ids, attention_mask, adapter_names)
