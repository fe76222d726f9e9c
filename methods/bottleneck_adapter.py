"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020), implemented natively.

Written by hand because no maintained library provides them here: peft has no bottleneck adapter
(and its `register_peft_method` accepts only names of its own PeftType enum), and the `adapters`
library requires transformers 4.x. The life-cycle mirrors peft's: safetensors artifacts, several
adapters loaded at once with one active, and a per-row adapter choice for mixed-task batches.

Placement: an adapter ``y + up(act(down(y)))`` follows the output projection of a sub-layer,
before its residual connection (Houlsby: after attention and feed-forward; Pfeiffer: after the
feed-forward only). ``up`` is zero-initialised, so training starts exactly from the base model.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from peft_bench import (
    Method, MethodConfig, ModelContext, UnknownName, assert_safetensors_only, check, freeze, opt,
    register_method, stack_as_storage,
)

# (attention output projection, feed-forward output projection) per architecture, as regexes
TARGETS = {
    "bert": (r"attention\.output\.dense$", r"layer\.\d+\.output\.dense$"),
    "roberta": (r"attention\.output\.dense$", r"layer\.\d+\.output\.dense$"),
    "llama": (r"self_attn\.o_proj$", r"mlp\.down_proj$"),
    "mistral": (r"self_attn\.o_proj$", r"mlp\.down_proj$"),
    "qwen2": (r"self_attn\.o_proj$", r"mlp\.down_proj$"),
}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


@dataclass
class BottleneckAdapterConfig(MethodConfig):
    lr: float = opt(3e-4, "peak learning rate (1e-3 made adapters drown MiniLM's signal on sentiment)")
    variant: Literal["houlsby", "pfeiffer"] = opt("houlsby", "houlsby: after attention and FFN; pfeiffer: after FFN")
    reduction_factor: int = opt(16, "bottleneck size = hidden size // reduction_factor")
    non_linearity: Literal["relu", "gelu", "tanh"] = opt("relu", "activation inside the bottleneck")
    init_std: float = opt(1e-2, "std of the down-projection init (up-projection starts at zero)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.reduction_factor >= 1, "reduction_factor", "an integer >= 1", self.reduction_factor)
        check(self.init_std >= 0, "init_std", "non-negative", self.init_std)


class _Routed(nn.Module):
    """Named sub-modules with one active, or a per-row choice (``row_names``) for mixed batches."""

    def __init__(self) -> None:
        super().__init__()
        self.bank = nn.ModuleDict()
        self.active = ""
        self.row_names: list[str] | None = None

    def route(self, x: torch.Tensor, fn) -> torch.Tensor:
        if self.row_names is None:
            return fn(self.active, x)
        if len(self.row_names) != x.shape[0]:
            raise ValueError(f"`adapter_names` must have one name per row ({x.shape[0]}), got {len(self.row_names)}.")
        out = torch.empty_like(fn(self.row_names[0], x[:1]).expand(x.shape[0], *([-1] * (x.dim() - 1))))
        for name in dict.fromkeys(self.row_names):
            idx = torch.tensor([i for i, n in enumerate(self.row_names) if n == name], device=x.device)
            out = out.index_copy(0, idx, fn(name, x.index_select(0, idx)))
        return out


class AdapterLayer(_Routed):
    """Wraps the output projection of a sub-layer and adds the bottleneck after it."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.rows: tuple | None = None  # (stacked weights, row index) while a mixed batch is served

    def add(self, name: str, cfg: BottleneckAdapterConfig) -> None:
        hidden = self.base.out_features
        size = max(1, hidden // cfg.reduction_factor)
        down, up = nn.Linear(hidden, size), nn.Linear(size, hidden)
        nn.init.normal_(down.weight, std=cfg.init_std)
        nn.init.zeros_(down.bias)
        nn.init.zeros_(up.weight)
        nn.init.zeros_(up.bias)
        self.bank[name] = nn.Sequential(down, ACTIVATIONS[cfg.non_linearity](), up).to(self.base.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.rows is not None:  # a mixed batch, each row's adapter gathered from the stacks
            (down_w, down_b, up_w, up_b), index = self.rows
            act = next(iter(self.bank.values()))[1]
            h = y.reshape(y.shape[0], -1, y.shape[-1])
            z = act(torch.baddbmm(down_b.index_select(0, index).unsqueeze(1), h, down_w.index_select(0, index).transpose(1, 2)))
            return y + torch.baddbmm(up_b.index_select(0, index).unsqueeze(1), z,
                                     up_w.index_select(0, index).transpose(1, 2)).reshape(y.shape)
        if not self.active and self.row_names is None:
            return y
        return self.route(y, lambda name, h: h + self.bank[name](h))


class HeadBank(_Routed):
    """Per-adapter copies of an encoder's classification head (the head is part of the artifact)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.template = [head]  # a list keeps the frozen original out of the state dict

    def add(self, name: str, cfg: BottleneckAdapterConfig) -> None:
        import copy

        self.bank[name] = copy.deepcopy(self.template[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.route(x, lambda name, h: self.bank[name](h))


class BottleneckModel(nn.Module):
    """The base model with adapters injected; holds the configs of the loaded adapters."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.base_model = model
        self.configs: dict[str, BottleneckAdapterConfig] = {}

    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def routed(self) -> list[_Routed]:
        """The routed modules, found once: they are fixed when the adapters are injected (loading
        adds to their banks), and a walk of every module per batch grows with the adapters loaded."""
        if "_routed" not in self.__dict__:
            self.__dict__["_routed"] = [m for m in self.base_model.modules() if isinstance(m, _Routed)]
        return self.__dict__["_routed"]

    def set_adapter(self, name: str) -> None:
        if name not in self.configs:
            raise UnknownName(f"no bottleneck adapter named {name!r}; loaded: {sorted(self.configs)}.")
        for m in self.routed():
            m.active = name

    @contextlib.contextmanager
    def mixed(self, adapter_names: list[str]):
        """Serve row i of the next forward passes with adapter ``adapter_names[i]``."""
        unknown = sorted(set(adapter_names) - set(self.configs))
        if unknown:
            raise UnknownName(f"unknown adapter(s) {unknown}; loaded: {sorted(self.configs)}.")
        # the stacks serve inference only: autograd does not see them as the adapters' weights
        stacks = None if torch.is_grad_enabled() else self.stacks()
        position = {n: i for i, n in enumerate(self.configs)}
        index = torch.tensor([position[n] for n in adapter_names])
        for m in self.routed():
            if stacks is not None and m in stacks:
                m.rows = stacks[m], index.to(m.base.weight.device)
            else:
                m.row_names = list(adapter_names)
        try:
            yield self
        finally:
            for m in self.routed():
                m.row_names = m.rows = None

    def stacks(self) -> dict | None:
        """Per adapter layer, its adapters' down and up weights and biases stacked in load order
        (the adapters' parameters re-pointed into them: one copy), so that a mixed batch gathers
        each row's adapter instead of looping over the batch's adapters; kept until the loaded
        adapters change (names, or a name loaded again). None where the adapters differ in size
        or activation (then rows are routed one adapter at a time)."""
        names = list(self.configs)
        layers = [m for m in self.routed() if isinstance(m, AdapterLayer)]

        def signature() -> list:
            return [m.bank[n][i].weight.data_ptr() for m in (layers[0], layers[-1]) for n in names for i in (0, 2)]

        kept = self.__dict__.get("_stacks")
        if kept is not None and kept[0] == names and kept[1] == signature():
            return kept[2]
        stacks = None
        if len({(type(m.bank[n][1]), m.bank[n][0].out_features) for m in layers for n in names}) == 1:
            stacks = {m: tuple(stack_as_storage([getattr(m.bank[n][i], w) for n in names])
                               for i, w in ((0, "weight"), (0, "bias"), (2, "weight"), (2, "bias")))
                      for m in layers}
        self.__dict__["_stacks"] = (names, signature(), stacks)
        return stacks

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if f".bank.{name}." in k}


def _inject(model: nn.Module, cfg: BottleneckAdapterConfig, ctx: ModelContext) -> BottleneckModel:
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if model_type not in TARGETS:
        raise ValueError(f"bottleneck_adapter supports model types {sorted(TARGETS)}, got {model_type!r}.")
    attn, ffn = TARGETS[model_type]
    patterns = [ffn] if cfg.variant == "pfeiffer" else [attn, ffn]
    targets = [n for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and any(re.search(p, n) for p in patterns)]
    heads = [n for n, _ in model.named_modules() if n.split(".")[-1] in ctx.head_names]
    for name in targets:
        parent, child = model.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]
        setattr(parent, child, AdapterLayer(getattr(parent, child)))
    for name in heads:
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        child = name.rpartition(".")[2]
        setattr(parent, child, HeadBank(getattr(parent, child)))
    return BottleneckModel(model)


def _add(wrapped: BottleneckModel, name: str, cfg: BottleneckAdapterConfig) -> None:
    if name in wrapped.configs:
        raise UnknownName(f"a bottleneck adapter named {name!r} is already loaded.")
    for m in wrapped.routed():
        m.add(name, cfg)
    wrapped.configs[name] = cfg
    wrapped.set_adapter(name)


@register_method("bottleneck_adapter")
class BottleneckAdapterMethod(Method):
    config_cls = BottleneckAdapterConfig
    description = "bottleneck MLPs after attention/FFN outputs (Houlsby or Pfeiffer), native"

    def prepare(self, model: nn.Module, ctx: ModelContext) -> nn.Module:
        freeze(model)
        wrapped = _inject(model, self.config, ctx)
        _add(wrapped, "default", self.config)
        for k, p in wrapped.named_parameters():
            p.requires_grad_(".bank.default." in k)
        return wrapped

    def save(self, model: BottleneckModel, path: Path) -> None:
        name = model.routed()[0].active
        prefix = f".bank.{name}."
        state = {k.replace(prefix, ".bank.ADAPTER."): v for k, v in model.adapter_state(name).items()}
        Path(path).mkdir(parents=True, exist_ok=True)
        save_file(state, str(Path(path) / "adapter_model.safetensors"))
        (Path(path) / "adapter_config.json").write_text(json.dumps(
            {"method": "bottleneck_adapter", **asdict(model.configs[name])}, indent=2))

    def load(self, model: nn.Module, path: Path, ctx: ModelContext, name: str) -> nn.Module:
        assert_safetensors_only(path)
        raw = json.loads((Path(path) / "adapter_config.json").read_text())
        raw.pop("method", None)
        cfg = BottleneckAdapterConfig(**raw)
        wrapped = model if isinstance(model, BottleneckModel) else _inject(model, cfg, ctx)
        _add(wrapped, name, cfg)
        state = {k.replace(".bank.ADAPTER.", f".bank.{name}."): v
                 for k, v in load_file(str(Path(path) / "adapter_model.safetensors")).items()}
        expected = set(wrapped.adapter_state(name))
        if set(state) != expected:
            missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
            raise ValueError(f"adapter at {path} does not fit this model: missing {missing}, unexpected {extra}.")
        wrapped.load_state_dict(state, strict=False)
        for p in wrapped.parameters():
            p.requires_grad_(False)
        return wrapped

    def activate(self, model: nn.Module, name: str) -> nn.Module:
        model.set_adapter(name)
        return model

    def unload(self, model: BottleneckModel, name: str) -> nn.Module:
        if name not in model.configs:
            raise UnknownName(f"no bottleneck adapter named {name!r}; loaded: {sorted(model.configs)}.")
        for m in model.routed():
            del m.bank[name]
            if m.active == name:
                m.active = next(iter(m.bank), "")
        del model.configs[name]
        return model

    def forward_mixed(self, model: BottleneckModel, input_ids, attention_mask, adapter_names):
        with model.mixed(list(adapter_names)):
            return model(input_ids=input_ids, attention_mask=attention_mask)
