"""LoRA mixed batches at many adapters: one gathered low-rank product per layer.

peft serves a mixed batch (``adapter_names``) by looping, in every adapted layer, over the batch's
distinct adapters: gather the rows, run that adapter's A and B, scatter back. With N tasks loaded
that is up to one iteration per row in every layer. Here each adapted linear layer holds its
loaded adapters' A and B stacked into a bank (A: (N, r, in), B: (N, out, r), scaling: (N,)); a
batch's rows gather their own A and B and the update is two batched matmuls per layer, whatever
the number of adapters. The adapters' own weights are re-pointed at their rows of the bank, so the
bank is their storage, not a second copy (serving memory grows by one artifact per task), and an
in-place change of a weight is the bank's change.

Written by hand: neither peft nor transformers has a gathered multi-LoRA path (S-LoRA and Punica
do it in CUDA kernels). peft's loop stays the reference: ``peft_mixed_forward``, measured side
by side by ``peftbench serve-bench`` and checked equal by the method contract. Where the bank
cannot represent the adapters exactly (a LoRA variant such as DoRA, a LoRA bias, merged weights,
ranks that differ, training mode, a layer that is not linear) the batch takes peft's loop.
"""

from __future__ import annotations

import contextlib

import torch

from peft_bench.interface.method import stack_as_storage
from peft_bench.interface.peft import _check_names, heads_routed

BANK = "_peft_bench_lora_bank"  # attribute of a PeftModel: the banks and what they were built from


def peft_mixed_forward(model, input_ids, attention_mask, adapter_names: list[str]):
    """peft's own mixed batch: every adapted layer loops over the batch's adapters."""
    return model(input_ids=input_ids, attention_mask=attention_mask, adapter_names=list(adapter_names))


def lora_bank_forward(model, input_ids, attention_mask, adapter_names: list[str]):
    """One forward in which row i gets adapter ``adapter_names[i]``'s low-rank update in every
    adapted layer, gathered from the layers' banks; task heads routed per row by peft."""
    _check_names(model, input_ids, adapter_names)
    # serving only: the banks are not what autograd sees as the weights, so training mode goes to
    # peft, which refuses `adapter_names` there with its own message
    state = None if model.training or torch.is_grad_enabled() else _bank(model)
    if state is None:
        return peft_mixed_forward(model, input_ids, attention_mask, adapter_names)
    names, layers = state
    position = {n: i for i, n in enumerate(names)}
    index = torch.tensor([position[n] for n in adapter_names], device=input_ids.device)
    with _gathered(layers, index), heads_routed(model, list(adapter_names)):
        return model(input_ids=input_ids, attention_mask=attention_mask)


def _bank(model):
    """(adapter names in bank order, [(layer, A bank, B bank, scaling), ...]); None where the bank
    cannot represent the adapters exactly. Kept on the model and rebuilt when the loaded adapters
    changed (names; a name loaded again: its weights' storage in the first and last layers) or a
    scaling did; in-place changes of the weights need nothing, the bank is their storage."""
    names = list(model.peft_config)
    hit = model.__dict__.get(BANK)
    if hit is not None and hit[0] == names and hit[1] == _signature(hit[2], names):
        return names, hit[2]
    built = _build(model, names)
    if built is None:  # not kept: what made it unrepresentable may change (a mode, a merge)
        model.__dict__.pop(BANK, None)
        return None
    model.__dict__[BANK] = (names, _signature(built, names), built)
    return names, built


def _signature(built, names: list[str]) -> list:
    """What a kept bank was built from, read from its first and last layers (the whole model is
    not walked per batch: at 64 adapters that walk alone costs a tenth of a forward)."""
    ends = [built[0][0], built[-1][0]]
    return [(m.lora_A[n].weight.data_ptr(), m.lora_B[n].weight.data_ptr(), m.scaling[n]) for m in ends for n in names]


def _build(model, names: list[str]):
    from peft.tuners.lora.layer import Linear, LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not layers or any(type(m) is not Linear or m.merged or m.lora_variant or any(m.lora_bias.values())
                         or list(m.lora_A) != names for m in layers):
        return None
    if len({m.r[n] for m in layers for n in names}) != 1:
        return None
    built = []
    for m in layers:  # the banks become the weights' storage
        a = stack_as_storage([m.lora_A[n].weight for n in names])
        b = stack_as_storage([m.lora_B[n].weight for n in names])
        built.append((m, a, b, torch.tensor([m.scaling[n] for n in names], dtype=a.dtype, device=a.device)))
    return built


@contextlib.contextmanager
def _gathered(layers, index: torch.Tensor):
    """Within the block, each layer computes its base output only (peft's disabled-adapter path)
    and a hook adds row i's update: scaling[i] * (x_i A_i^T) B_i^T, in the order peft computes it."""

    def hook(bank):
        _, a, b, s = bank
        a_rows, b_rows, s_rows = a.index_select(0, index), b.index_select(0, index), s.index_select(0, index)

        def add(module, args, kwargs, out):
            x = (args[0] if args else kwargs["x"]).to(a.dtype)
            shape = x.shape
            x = x.reshape(shape[0], -1, shape[-1])  # (rows, positions, in)
            h = torch.bmm(torch.bmm(x, a_rows.transpose(1, 2)), b_rows.transpose(1, 2))
            return out + (h * s_rows.view(-1, 1, 1)).reshape(*shape[:-1], -1).to(out.dtype)
        return add

    handles, flags = [], []
    try:
        for bank in layers:
            m = bank[0]
            flags.append((m, m._disable_adapters))
            m._disable_adapters = True
            handles.append(m.register_forward_hook(hook(bank), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m._disable_adapters = flag
