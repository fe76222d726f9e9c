"""Shared life-cycle of the methods that peft implements (prompt, prefix, P-tuning, LoRA)."""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass
from pathlib import Path

from peft import PeftConfig, PeftModel, TaskType, get_peft_model
from torch import nn

from peft_bench.core.config import UnknownName, check, opt
import torch

from peft_bench.interface.method import Method, MethodConfig, MixedBatchUnsupported, ModelContext, assert_safetensors_only


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
        forget_banked(model, name)
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        else:
            model = PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=False)
        return self.activate(model, name)

    def activate(self, model: nn.Module, name: str) -> nn.Module:
        model.set_adapter(name)
        return model

    def unload(self, model: nn.Module, name: str) -> nn.Module:
        from peft.utils import ModulesToSaveWrapper

        forget_banked(model, name)
        if name in model.peft_config and model.peft_config[name].is_prompt_learning and len(model.peft_config) > 2:
            # peft (0.21) hands every remaining prompt adapter to the task-head wrappers as their new
            # active one, which they refuse when there are two or more: their copies go first, with
            # one successor, and peft's delete then finds nothing left in them to hand over
            keep = next(n for n in [model.active_adapter, *model.peft_config] if n != name)
            for m in model.modules():
                if isinstance(m, ModulesToSaveWrapper):
                    m.delete_adapter(name, new_active_adapters=[keep])
        model.delete_adapter(name)
        return model

    def virtual_tokens(self, model: nn.Module) -> tuple[int, int]:
        """Prompt and P-tuning prepend their virtual tokens to the input (positions and keys);
        prefix tuning's and cartridges' go to every layer's keys and values only (peft passes them
        as past key values)."""
        from peft import PeftType

        cfg = model.peft_config[model.active_adapter] if isinstance(model, PeftModel) else None
        if cfg is None or not cfg.is_prompt_learning:
            return 0, 0
        v = int(cfg.num_virtual_tokens)
        return (0, v) if cfg.peft_type in (PeftType.PREFIX_TUNING, PeftType.CARTRIDGE) else (v, v)


def prompt_bank_forward(model: PeftModel, input_ids, attention_mask, adapter_names: list[str]):
    """One forward in which row i gets the soft prompt of adapter ``adapter_names[i]``.

    peft applies the active adapter's prompt to every row and silently ignores ``adapter_names``
    for prompt-learning methods (wrong rows, no error). Here each row gathers its own prompt from
    a bank of the loaded adapters' prompts and the batch goes in as ``inputs_embeds``, exactly as
    peft builds it for one adapter; task heads (encoders) are routed per row by peft's own
    ``ModulesToSaveWrapper`` mixed-batch path.
    """
    bank = banked(model, _check_names(model, input_ids, adapter_names), lambda m: m.get_prompt(batch_size=1)[0])
    lengths = {n: p.shape[0] for n, p in bank.items()}
    if len(set(lengths.values())) > 1:
        raise MixedBatchUnsupported(f"prompts of different lengths cannot share a batch: {lengths}.")
    embeds = model.word_embeddings(input_ids)
    prompts = torch.stack([bank[n] for n in adapter_names]).to(embeds.dtype)
    mask = torch.cat([torch.ones(prompts.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device),
                      attention_mask], dim=1)
    with heads_routed(model, adapter_names):
        return model.get_base_model()(inputs_embeds=torch.cat([prompts, embeds], dim=1), attention_mask=mask)


def prefix_bank_forward(model: PeftModel, input_ids, attention_mask, adapter_names: list[str]):
    """One forward in which row i gets adapter ``adapter_names[i]``'s key/value prefix in every layer.

    peft builds one prefix cache per batch from the active adapter and ignores ``adapter_names``.
    Here each loaded adapter's prefix cache is built once (peft's own ``get_prompt``, so every
    model type's layout and post-processing are peft's), its per-layer keys and values are
    stacked into a bank, and row i gathers its adapter's slice into the batch's cache; the
    prefix positions are prepended to the attention mask, as peft does for one adapter. Task
    heads are routed per row as for prompts.
    """
    from transformers import DynamicCache

    names = _check_names(model, input_ids, adapter_names)
    layers = banked(model, names, lambda m: _layers(m.get_prompt(batch_size=1)))
    lengths = {n: ls[0][0].shape[-2] for n, ls in layers.items()}
    if len(set(lengths.values())) > 1:
        raise MixedBatchUnsupported(f"prefixes of different lengths cannot share a batch: {lengths}.")
    index = torch.tensor([names.index(n) for n in adapter_names], device=input_ids.device)
    per_layer = []
    for i in range(len(layers[names[0]])):
        k = torch.cat([layers[n][i][0] for n in names])  # (adapters, heads, V, head_dim): the bank
        v = torch.cat([layers[n][i][1] for n in names])
        per_layer.append((k.index_select(0, index), v.index_select(0, index)))
    v_len = next(iter(lengths.values()))
    mask = torch.cat([torch.ones(input_ids.shape[0], v_len, dtype=attention_mask.dtype, device=attention_mask.device),
                      attention_mask], dim=1)
    with heads_routed(model, adapter_names):
        return model.get_base_model()(input_ids=input_ids, attention_mask=mask,
                                      past_key_values=DynamicCache(ddp_cache_data=per_layer))


BANK = "_peft_bench_bank"  # attribute of a PeftModel: adapter name -> (key, its prompt or prefix)
HEADS = "_peft_bench_heads"  # attribute of a PeftModel: (loaded adapters, their task-head wrappers)


def banked(model: PeftModel, names: list[str], build) -> dict:
    """Per adapter, ``build(model)`` with that adapter active: its prompt (or prefix cache), built
    once and kept on the model while serving, so a mixed batch gathers rows from a ready bank
    instead of switching adapters. Rebuilt when one of the adapter's prompt-encoder parameters
    changed in place (torch's version counter) and after ``load`` / ``unload`` of that name
    (``forget_banked``); never kept while gradients are recorded (it would hold the graph). A kept
    entry is built outside inference mode and, where it equals the adapter's own weights, is a
    view of them (``_as_views``)."""
    keep = not torch.is_grad_enabled()
    store = model.__dict__.setdefault(BANK, {})

    def key(n: str) -> tuple:
        return tuple(p._version for p in model.prompt_encoder[n].parameters())

    out, missing = {}, []
    for n in names:
        hit = store.get(n)
        if keep and hit is not None and hit[0] == key(n):
            out[n] = hit[1]
        else:
            missing.append(n)
    if missing:
        active = model.active_adapter
        try:
            for n in missing:
                model.set_adapter(n)
                if not keep:
                    out[n] = build(model)
                    continue
                with torch.inference_mode(False), torch.no_grad():
                    out[n] = _as_views(list(model.prompt_encoder[n].parameters()), build(model))
                store[n] = (key(n), out[n])
        finally:
            model.set_adapter(active)
    return out


def _as_views(params: list[torch.Tensor], built):
    """``built`` as views of the adapter's own parameters where it holds exactly their values: in
    inference mode peft's ``get_prompt`` repeats the prompt embedding (a prompt equals the weight;
    a prefix's per-layer keys and values equal slices of it in peft's standard layout), so a loaded
    task costs one copy, not two. Anything else (a projection, a model's own post-processing) is
    kept as built."""
    if isinstance(built, torch.Tensor):
        same = [p for p in params if p.shape == built.shape and torch.equal(p, built)]
        return same[0].detach() if same else built
    if len(params) != 1 or not built:
        return built
    w, (k0, _) = params[0].detach(), built[0]
    layers, heads, head_dim = len(built), k0.shape[1], k0.shape[-1]
    if k0.shape[0] != 1 or w.numel() != w.shape[0] * layers * 2 * heads * head_dim:
        return built
    kv = w.view(1, w.shape[0], layers * 2, heads, head_dim).permute(2, 0, 3, 1, 4)  # as peft lays it out
    views = [(kv[2 * i], kv[2 * i + 1]) for i in range(layers)]
    same = all(a.shape == k.shape and torch.equal(a, k) and torch.equal(b, v) for (a, b), (k, v) in zip(views, built))
    return views if same else built


def forget_banked(model: nn.Module, name: str) -> None:
    getattr(model, BANK, {}).pop(name, None)


def _layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a prefix cache as peft builds it (a transformers Cache or a tuple)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(kv[0], kv[1]) for kv in cache]


def _check_names(model: PeftModel, input_ids, adapter_names: list[str]) -> list[str]:
    """The distinct loaded adapters ``adapter_names`` names, in first-seen order (one per row)."""
    unknown = sorted(set(adapter_names) - set(model.peft_config))
    if unknown:
        raise UnknownName(f"unknown adapter(s) {unknown}; loaded: {sorted(model.peft_config)}.")
    if len(adapter_names) != input_ids.shape[0]:
        raise ValueError(f"`adapter_names` must have one name per row ({input_ids.shape[0]}), got {len(adapter_names)}.")
    return list(dict.fromkeys(adapter_names))


@contextlib.contextmanager
def heads_routed(model: nn.Module, adapter_names: list[str]):
    """Within the block, the task heads peft copies per adapter (``ModulesToSaveWrapper``: an
    encoder's classifier) serve row i with adapter ``adapter_names[i]``'s copy, through peft's own
    mixed-batch path for them."""
    from peft.utils import ModulesToSaveWrapper

    loaded = tuple(getattr(model, "peft_config", ()))
    kept = model.__dict__.get(HEADS)
    if kept is None or kept[0] != loaded:  # walked once per set of loaded adapters, not per batch
        kept = model.__dict__[HEADS] = (loaded, [m for m in model.modules() if isinstance(m, ModulesToSaveWrapper)])
    hooks = [m.register_forward_pre_hook(lambda mod, args, kw: (args, {**kw, "adapter_names": adapter_names}),
                                         with_kwargs=True)
             for m in kept[1]]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
