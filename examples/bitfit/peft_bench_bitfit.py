"""BitFit (Ben Zaken et al. 2022): train only the bias terms of the model (and the task head).

A native method: peft-bench hands `prepare` the plain transformers model (an encoder's
classification head is its `classifier` module, named in `ctx.head_names`); the artifact holds every
tensor that trained, so that it rebuilds the task on an untouched base model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from peft_bench import (
    Method, MethodConfig, ModelContext, assert_safetensors_only, freeze, opt, register_method, unfreeze_head,
)

FILE = "bitfit.safetensors"


@dataclass
class BitFitConfig(MethodConfig):
    lr: float = opt(1e-3, "peak learning rate")


@register_method("bitfit")
class BitFit(Method):
    config_cls = BitFitConfig
    description = "bias terms only (BitFit; an outside plugin: examples/bitfit)"
    model_kinds = ("encoder",)  # refused before a suite runs on any other kind, with the reason
    kind_reason = "Llama-style decoders have no bias terms: nothing would train"

    def prepare(self, model: torch.nn.Module, ctx: ModelContext) -> torch.nn.Module:
        freeze(model)
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.requires_grad_(True)
        unfreeze_head(model, ctx)  # every method trains the encoder's head
        return model

    def save(self, model: torch.nn.Module, path: Path) -> None:
        state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(state, str(Path(path) / FILE))

    def load(self, model: torch.nn.Module, path: Path, ctx: ModelContext, name: str) -> torch.nn.Module:
        # `model` is the plain base model, or one this method already loaded artifacts into
        assert_safetensors_only(path)
        if not hasattr(model, "bitfit_tasks"):
            model.bitfit_tasks = {}
        model.bitfit_tasks[name] = load_file(str(Path(path) / FILE))
        return self.activate(model, name)

    def activate(self, model: torch.nn.Module, name: str) -> torch.nn.Module:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in model.bitfit_tasks[name].items():
                params[n].copy_(t)
        return model

    def unload(self, model: torch.nn.Module, name: str) -> torch.nn.Module:
        del model.bitfit_tasks[name]
        return model
