"""Every peft type as a method, generated from peft's own registry.

For each type in peft's ``PEFT_TYPE_TO_CONFIG_MAPPING`` (``register_peft_method`` adds to it) there
is a method named by the lowercase type (``ia3``, ``loha``, ``vera``, ...), looked up when asked
for, so a type that a peft upgrade (or a package calling ``register_peft_method``) brings in is a
method here without a line of peft-bench. Its config fields are the peft config dataclass's own
fields, defaults and help, plus ``lr``; peft validates the whole config when a suite is loaded.

The four types with a hand-written method here (prompt_tuning, prefix_tuning, p_tuning, lora) keep
it: those are the reference implementations (their own configs, initialisations and mixed-batch
serving). What the tables below add by hand is only what peft cannot know about this harness: why a
type cannot run on single-task classification, on which model kinds it runs, a default learning
rate per family, and defaults for the few sizes peft fixes for larger models than the tiny ones.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from typing import Any, ClassVar

from peft import PeftConfig, PeftModel, PeftType
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
import torch
from torch import nn

from peft_bench import (
    METHODS, ConfigError, assert_safetensors_only, MethodConfig, MixedBatchUnsupported, ModelContext, PeftMethod, heads_routed, opt, prefix_bank_forward, task_type,
)

# the types whose hand-written method is the reference implementation (methods/<name>.py)
REFERENCE = frozenset({"prompt_tuning", "prefix_tuning", "p_tuning", "lora"})

# why a type cannot train on single-task classification with peft-bench's models (any kind)
UNAVAILABLE = {
    "xlora": "X-LoRA mixes LoRA experts that are already trained (its `adapters`); a run has none",
    "shadow": "peft 0.21.2's SHADOW breaks in training on this transformers' Llama ('ShadowCarrier' object has "
              "no attribute 'view' in the attention projections), and it needs decoder layers (no encoders)",
    "cpt": "CPT trains on few-shot contexts in its own input format (cpt_token_ids, cpt_mask, "
           "cpt_tokens_type_mask) with its own loss; rank-classification inputs carry none of them",
}
# types whose forward takes each row's task id (``task_ids``): a run is one task, so every row gets
# id 0 (the prompt's factors or the skills' routing of that task). Multitask prompt tuning's shared
# prompt can start from one trained on source tasks (peft's own `prompt_tuning_init` =
# "AVERAGE_SOURCE_TASKS", "EXACT_SOURCE_TASK" or "ONLY_SOURCE_SHARED" with
# `prompt_tuning_init_state_dict_path`); without one it trains with the task's factors, from random
TASK_ID_TYPES = frozenset({"poly", "multitask_prompt_tuning"})
# types that run on one model kind only, and why
ONLY_KIND = {
    "adaption_prompt": ("causal", "peft implements adaption prompts for Llama-style decoder attention only"),
}
# default learning rate per family (the rest: 1e-3, as LoRA here). Not validated on these tasks:
# from the methods' papers, which train vectors or spectral coefficients at higher rates; AdaLoRA
# starts from zero singular values and small factors (sigma 0.02): at 1e-3 a 40-step run on the tiny
# causal LM leaves its loss flat (5.526 -> 5.531), at 1e-2 it falls (5.526 -> 5.284)
LEARNING_RATES = {"adalora": 1e-2, "adaption_prompt": 1e-2, "multitask_prompt_tuning": 3e-2, "ia3": 3e-3, "trainable_tokens": 3e-2, "vera": 1e-2, "pvera": 1e-2, "fourierft": 5e-2, "waveft": 5e-2}
# defaults peft leaves unset that a run needs (trainable_tokens: empty = the task's own tokens, below)
DEFAULTS = {"adaption_prompt": {"adapter_len": 10, "adapter_layers": 1},
            "cartridge": {"num_virtual_tokens": 20}, "multitask_prompt_tuning": {"num_virtual_tokens": 20}}
HELP = {("trainable_tokens", "token_indices"): "vocabulary ids whose embeddings train; empty (the default): the "
                                               "tokens of the task's template and label words"}
# targets where peft has no default for the architecture (the rest fall back to LoRA's)
FALLBACK_TARGETS = {"ln_tuning": {"bert": ["LayerNorm"]}}
# sizes that must divide the adapted layers' widths; peft's defaults suit wider models: where the
# default does not divide, the largest power of two below it that divides every width is used
DIVIDING_SIZES = {"c3a": "block_size", "vblora": "vector_length", "road": "group_size"}
# fields of the harness's own beside peft's (name: type, default, help), read by ``init_adapter``
OWN_FIELDS = {"cartridge": {"init": (
    typing.Literal["auto", "text", "random"], "auto",
    "where the keys and values start: 'text' = the base model's own keys and values of the first training "
    "prompts (the Cartridges paper's best initialisation, peft's initialize_kv_prefix_from_text), 'random' "
    "= peft's default; 'auto' = 'text' on causal LMs, 'random' on encoders (they return no key/value cache)")}}
# fields the run fills (from ``ModelContext``), not set in a suite: peft validates them when the run
# starts; when a suite is loaded, with a stand-in (AdaLoRA's budget schedule spans the run's steps)
RUN_FIELDS = {"adalora": {"total_step": ("train_steps", 10**6)}}
# filled in by peft from the model, or fixed by the harness
HIDDEN = frozenset({f.name for f in dataclasses.fields(PeftConfig)}
                   | {"num_transformer_submodules", "num_attention_heads", "num_layers", "token_dim"})


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _field_type(tp: Any) -> Any:
    """peft's annotation where the config checker understands it, else ``Any`` (peft checks it)."""
    return tp if _understood(tp) else Any


def _understood(tp: Any) -> bool:
    if tp is Any or tp in (int, float, bool, str, dict, list, type(None)):
        return True
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return True
    if origin in (list, tuple, dict, typing.Union, types.UnionType):
        return all(_understood(a) for a in typing.get_args(tp))
    return False


class GenericPeftConfig(MethodConfig):
    """Base of the generated configs: peft validates the whole config when it is built."""

    peft_cls: ClassVar[type] = PeftConfig
    method_name: ClassVar[str] = ""

    def peft_kwargs(self) -> dict[str, Any]:
        own = {"lr", *OWN_FIELDS.get(self.method_name, {})}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in own}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method_name in UNAVAILABLE:  # refused by name before any run: no config to check
            return
        stand_ins = {k: v for k, (_, v) in RUN_FIELDS.get(self.method_name, {}).items()}
        _peft_config(self.peft_cls, **self.peft_kwargs(), **stand_ins)


def _peft_config(peft_cls: type, **kwargs: Any) -> PeftConfig:
    """peft's config; its refusal (peft validates in ``__post_init__``) as a ConfigError."""
    try:
        return peft_cls(**kwargs)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"peft's {peft_cls.__name__} refuses this config: "
                          f"{(str(e).strip().splitlines() or [''])[0]}") from None


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _config_class(name: str, peft_cls: type) -> type:
    try:
        hints = typing.get_type_hints(peft_cls)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: peft checks the value
        hints = {}
    fields: list[tuple[str, Any, Any]] = [
        ("lr", float, opt(LEARNING_RATES.get(name, 1e-3), "peak learning rate"
                          + (" (the family's usual rate, not validated here)" if name in LEARNING_RATES else "")))]
    fields += [(k, tp, opt(default, text)) for k, (tp, default, text) in OWN_FIELDS.get(name, {}).items()]
    for f in dataclasses.fields(peft_cls):
        if f.name in HIDDEN or f.name in RUN_FIELDS.get(name, {}) or not f.init or f.name == "lr":
            continue
        default = DEFAULTS.get(name, {}).get(f.name, _default(f))
        if default is not None and not isinstance(default, (int, float, str, list, dict, tuple)):
            continue  # an object (e.g. a runtime config class): not settable from a suite file, peft's default
        help_text = (HELP.get((name, f.name)) or " ".join(str(f.metadata.get("help", "")).split())
                     or "(peft gives no help text)")
        tp = _field_type(hints.get(f.name, Any))
        if default is None and type(None) not in typing.get_args(tp) and tp is not Any:
            tp = typing.Optional[tp]
        fields.append((f.name, tp, opt(default, help_text)))
    cls = dataclasses.make_dataclass(f"{_camel(name)}Config", fields, bases=(GenericPeftConfig,),
                                     namespace={"peft_cls": peft_cls, "method_name": name})
    cls.__module__ = __name__  # picklable by name: a run's process rebuilds it on import
    return cls


class GenericPeftMethod(PeftMethod):
    """A peft type run through peft's own ``get_peft_model``, save and load."""

    peft_type: ClassVar[Any] = None

    def peft_config(self, model: nn.Module, ctx: ModelContext) -> PeftConfig:
        c = self.config
        kw = c.peft_kwargs()
        model_type = getattr(getattr(model, "config", None), "model_type", "")
        tuner = PEFT_TYPE_TO_TUNER_MAPPING.get(self.peft_type)
        known = getattr(tuner, "target_module_mapping", None)
        if "target_modules" in kw and kw["target_modules"] is None and known is not None and model_type not in known:
            kw["target_modules"] = (FALLBACK_TARGETS.get(self.name, {}).get(model_type)
                                    or TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type))
        if self.name == "trainable_tokens" and not kw["token_indices"]:
            kw["token_indices"] = _task_tokens(ctx)
        if self.name in DIVIDING_SIZES:
            key = DIVIDING_SIZES[self.name]
            widths = _target_widths(model, kw.get("target_modules") or (known or {}).get(model_type) or [])
            kw[key] = _dividing_size(kw[key], widths)
        kw.update({k: getattr(ctx, attr) for k, (attr, _) in RUN_FIELDS.get(self.name, {}).items()})
        return _peft_config(type(c).peft_cls, task_type=task_type(ctx), **kw)

    def init_adapter(self, model: PeftModel, ctx: ModelContext) -> None:
        if self.name in TASK_ID_TYPES:
            _single_task_ids(model)
        if self.name == "cartridge" and self.config.init in ("text", "auto") and not (
                self.config.init == "auto" and ctx.kind != "causal"):
            _kv_from_training_text(model, ctx)

    def load(self, model: nn.Module, path, ctx: ModelContext, name: str) -> nn.Module:
        model = super().load(model, path, ctx, name)
        if self.name in TASK_ID_TYPES:
            _single_task_ids(model)
        return model

    def forward_mixed(self, model, input_ids, attention_mask, adapter_names):
        if isinstance(model, PeftModel) and model.peft_config[model.active_adapter].peft_type == PeftType.CARTRIDGE:
            return prefix_bank_forward(model, input_ids, attention_mask, list(adapter_names))  # a prefix cache per row
        if isinstance(model, PeftModel) and _routes_rows(model):
            # peft routes the adapted layers' rows; the task heads (encoders) are routed here, as
            # peft's LoRA path does for itself (GLoRA and RoAd leave them to the active adapter)
            with heads_routed(model, list(adapter_names)):
                return model(input_ids=input_ids, attention_mask=attention_mask, adapter_names=list(adapter_names))
        # peft drops or ignores `adapter_names` for every other type: each row would get the active adapter
        raise MixedBatchUnsupported(f"peft does not route rows to adapters for {self.name!r} (it would serve "
                                    f"every row with the active one)")


def _routes_rows(model: PeftModel) -> bool:
    """peft passes ``adapter_names`` to the adapted layers (``_enable_peft_forward_hooks``) and every
    adapted layer's forward reads it (AdaLoRA's layers take the hook's argument and ignore it)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not hasattr(model.base_model, "_enable_peft_forward_hooks"):
        return False
    layers = {type(m) for m in model.modules() if isinstance(m, BaseTunerLayer)}
    return bool(layers) and all("adapter_names" in t.forward.__code__.co_varnames for t in layers)


class AdaLoraSteps(GenericPeftMethod):
    """AdaLoRA's two additions to the training loop, made as peft's own AdaLoRA example makes them:
    the rank allocation after each optimizer step (it reads the step's gradients), and the
    orthogonality penalty on its P and Q factors, which peft adds inside its forward only to a loss
    the model computes itself (the harness computes the loss from the logits)."""

    def __init__(self, config=None):
        super().__init__(config)
        self._step = 0

    def after_step(self, model: nn.Module) -> None:
        getattr(model, "module", model).base_model.update_and_allocate(self._step)
        self._step += 1

    def regularization(self, model: nn.Module):
        # written out because peft has it only inline in ``AdaLoraModel.forward``: the mean over the
        # adapter's A (rows) and B (columns) of ||P P^T - I||_F, times ``orth_reg_weight``
        tuner = getattr(model, "module", model).base_model
        name = tuner.trainable_adapter_name
        weight = tuner.peft_config[name].orth_reg_weight
        terms = []
        for n, p in tuner.model.named_parameters():
            if p.requires_grad and ("lora_A" in n or "lora_B" in n) and name in n:
                cov = p @ p.T if "lora_A" in n else p.T @ p
                terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)))
        return weight * torch.stack(terms).mean() if weight and terms else None

    def load(self, model: nn.Module, path, ctx: ModelContext, name: str) -> nn.Module:
        # peft's AdaLoraModel finds the module of each saved `rank_pattern` key by asking whether the
        # adapter's name occurs in the key (a substring test), and saved keys carry no name: loaded as
        # "t" (a substring of "attention"), "...attention.self.query.lora_E" resolves to the attention
        # block and the load fails. With the name appended, every key resolves to its own layer.
        assert_safetensors_only(path)
        config = PeftConfig.from_pretrained(str(path))
        config.rank_pattern = {f"{k}.{name}": v for k, v in (config.rank_pattern or {}).items()} or None
        config.inference_mode = True
        if isinstance(model, PeftModel):
            model.add_adapter(name, config)
            model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        else:
            model = PeftModel.from_pretrained(model, str(path), adapter_name=name, config=config, is_trainable=False)
        return self.activate(model, name)


# types whose training needs more than peft's get_peft_model, save and load
BASES = {"adalora": AdaLoraSteps}


def _single_task_ids(model: PeftModel) -> None:
    """Every forward of ``model`` that names no ``task_ids`` serves each row as task 0 (once per model)."""
    if getattr(model, "_single_task_ids", None) is not None:
        return

    def add_task_ids(module, args, kwargs):
        if kwargs.get("task_ids") is None:
            x = next(v for v in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), *args) if v is not None)
            kwargs = {**kwargs, "task_ids": torch.zeros(x.shape[0], dtype=torch.long, device=x.device)}
        return args, kwargs

    model._single_task_ids = model.register_forward_pre_hook(add_task_ids, with_kwargs=True)


def _kv_from_training_text(model: PeftModel, ctx: ModelContext) -> None:
    """A cartridge's keys and values start as the base model's own for the first tokens of the
    training prompts (joined, repeated if short), as the Cartridges paper initialises from its corpus."""
    from peft import initialize_kv_prefix_from_text

    n = model.peft_config[model.active_adapter].num_virtual_tokens
    texts = ctx.train_texts or [ctx.task.prompt({f: "" for f in ctx.task.input_fields})]
    text = ""
    while len(ctx.tokenizer(text, add_special_tokens=False)["input_ids"]) < n:
        text += "\n".join(texts) + "\n"
    initialize_kv_prefix_from_text(model, ctx.tokenizer, text=text, use_chat_template=False, max_length=n)


def _task_tokens(ctx: ModelContext) -> list[int]:
    """The vocabulary ids of the task's template (without its inputs) and label words."""
    task, tok = ctx.task, ctx.tokenizer
    text = task.prompt({f: "" for f in task.input_fields}) + "".join(task.target_prefix + w for w in task.label_words)
    return sorted(set(tok(text, add_special_tokens=False)["input_ids"]))


def _target_widths(model: nn.Module, targets) -> list[int]:
    names = [targets] if isinstance(targets, str) else list(targets)
    return [w for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] in names
            for w in (m.in_features, m.out_features)]


def _dividing_size(size: int, widths: list[int]) -> int:
    if not widths or all(w % size == 0 for w in widths):
        return size
    g = math.gcd(*widths)
    return max(p for p in (2 ** k for k in range(int(math.log2(size)) + 1)) if g % p == 0)


_BUILT: dict[tuple, type] = {}


def _method_class(peft_type, peft_cls) -> type:
    key = (peft_type, peft_cls)
    if key not in _BUILT:
        name = peft_type.value.lower()
        kind, why = ONLY_KIND.get(name, (None, ""))
        if kind is None and "modules_to_save" not in {f.name for f in dataclasses.fields(peft_cls)}:
            kind, why = "causal", ("its peft config has no `modules_to_save`: an encoder's classification head "
                                   "would be neither trained nor saved")
        attrs = {"name": name, "peft_type": peft_type, "config_cls": _config_class(name, peft_cls),
                 "description": f"peft {peft_type.value} ({peft_cls.__name__}), through peft's own API",
                 "unavailable": UNAVAILABLE.get(name, ""), "kind_reason": why,
                 "model_kinds": (kind,) if kind else ("encoder", "causal")}
        cls = type(f"{_camel(name)}Method", (BASES.get(name, GenericPeftMethod),), attrs)
        cls.__module__ = __name__
        for c in (cls, attrs["config_cls"]):
            setattr(sys.modules[__name__], c.__name__, c)
        _BUILT[key] = cls
    return _BUILT[key]


def peft_methods() -> dict[str, type]:
    """One method per type in peft's registry as it is now (the reference four excepted)."""
    return {pt.value.lower(): _method_class(pt, cls) for pt, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()
            if pt.value.lower() not in REFERENCE}


METHODS.add_provider(peft_methods)
