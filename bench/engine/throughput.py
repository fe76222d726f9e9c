"""Training throughput: tokens per second, an estimate of the FLOPs training did, and their share
of the device's peak (model FLOPs utilisation, MFU, as nanoGPT's ``estimate_mfu`` and PaLM's).

The FLOPs are *model* FLOPs, counted from the model's own layers and the batches it saw, not
read from a profiler (``tests/test_throughput.py`` checks the count against
``torch.utils.flop_counter``). Per position a row of the body processes (its padded length plus
the virtual tokens a prompt method prepends):

- forward: 2 FLOPs per weight of every linear layer a token passes through in the model's body
  (base weights and a method's own layers inside it, such as LoRA's; the task head and the output
  embeddings are left out: under 1% here);
- backward, when anything below the head trains: 2 per weight again for the gradient of the
  activations, plus 2 per *trainable* linear weight for the weights' own gradients (a frozen
  weight needs none: the reason 6N, nanoGPT's count for full training, overstates PEFT);
- attention: for a row of T positions attending to K keys, 4·T·K·d FLOPs per layer forward (QKᵀ
  and AV, d = heads × head size), twice that backward. A prompt's virtual tokens add to T and K,
  a prefix's (prefix tuning) to K only (``Method.virtual_tokens``).

- a prompt encoder (P-tuning's, prefix tuning's projection: linear layers outside the body) runs
  on every virtual token of every row: 6 FLOPs per weight (forward, input and weight gradients).

Input-side gradients are counted only for the layers whose input requires one (autograd skips
the rest: the first layer's projections under LoRA or adapters), as hooks see on the first
training step (``InputGradProbe``). Checked against ``torch.utils.flop_counter`` on 2-layer
models (``tests/test_throughput.py``): exact for prompt tuning and full fine-tuning; 2% high for
LoRA and prefix tuning (attention's backward is counted whole, though keys that need no gradient
skip two of its four matmuls in the first layer); up to 12% high for P-tuning (its encoder is
counted once per row) and 29% for bottleneck adapters (whose first sub-layers skip more of the
backward than the probe sees) — 3% for adapters on MiniLM's 6 layers. Recomputation (gradient checkpointing) is not counted: MFU counts the model's FLOPs, not the
hardware's. The peak is the device's dense peak for the run's precision from ``PEAK_TFLOPS``
(data sheets; sparsity excluded), or, for a device not listed and every CPU, measured: the best of
several square matmuls in that precision with the run's threads, cached per machine.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from peft_bench.core.paths import write_whole

# dense peak TFLOP/s per precision, from the vendors' data sheets (no sparsity): (name substring, {dtype: TFLOP/s}).
# fp32 for A100/H100/H200 is TF32 tensor-core matmul, which torch uses only when allowed: the plain fp32 figure
# is listed instead.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
    ("A10G", {"bf16": 70.0, "fp16": 70.0, "fp32": 31.2}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),
)


@dataclass
class TokenCount:
    """What the training loop fed the model, counted per micro-batch without a host sync."""

    extra_positions: int = 0  # virtual tokens the method prepends to every row's positions
    extra_keys: int = 0  # ... and to the keys every position attends to
    rows: int = 0
    positions: int = 0  # rows x (padded length + extra_positions)
    attended: int = 0  # rows x positions per row x keys per row: the attention term
    token_sums: list = field(default_factory=list)  # real (unpadded) input tokens, per micro-batch (device tensors)

    def add(self, batch: dict) -> None:
        rows, width = batch["input_ids"].shape
        self.rows += rows
        self.positions += rows * (width + self.extra_positions)
        self.attended += rows * (width + self.extra_positions) * (width + self.extra_keys)
        self.token_sums.append(batch["attention_mask"].sum())

    @property
    def tokens(self) -> int:
        return int(torch.stack(self.token_sums).sum().item()) if self.token_sums else 0


def _linear_layers(model: nn.Module, head_names: tuple[str, ...]) -> tuple[list[nn.Module], list[nn.Module]]:
    """The linear layers (``nn.Linear`` / ``Conv1D``) of the model's body — its base model's, a
    method's layers injected there included, without the task head (a module named in
    ``head_names``) and the output embeddings — and those outside the body (a prompt encoder)."""
    from transformers.pytorch_utils import Conv1D

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out_emb = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    skip = {id(m) for m in [out_emb] if m is not None}
    for name, m in model.named_modules():
        if set(name.split(".")) & set(head_names):
            skip.update(id(x) for x in m.modules())
    body = {id(m) for m in base.modules()}
    linear = [m for m in model.modules() if isinstance(m, (nn.Linear, Conv1D)) and id(m) not in skip]
    return [m for m in linear if id(m) in body], [m for m in linear if id(m) not in body]


class InputGradProbe:
    """Which body linear layers receive an input that requires a gradient (autograd computes the
    input-side gradient of those only): forward hooks over one forward pass, then removed."""

    def __init__(self, model: nn.Module, head_names: tuple[str, ...]):
        self.needs: dict[int, bool] = {}
        body, _ = _linear_layers(model, head_names)
        self._hooks = [m.register_forward_hook(self._hook) for m in body]

    def _hook(self, module, args, output) -> None:
        x = args[0] if args else None
        self.needs[id(module)] = self.needs.get(id(module), False) or bool(getattr(x, "requires_grad", True))

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def attention_shape(model: nn.Module) -> tuple[int, int]:
    """(layers, heads x head size) from the model's config (the first module that has one)."""
    cfg = next(m.config for m in model.modules() if hasattr(getattr(m, "config", None), "to_dict"))
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer")
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head")
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd")
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    return layers, heads * head_dim


def backward_through_body(model: nn.Module, head_names: tuple[str, ...]) -> bool:
    """Does a gradient flow through the body (anything but the head trains)?"""
    return any(p.requires_grad for n, p in model.named_parameters() if not set(n.split(".")) & set(head_names))


def training_flops(model: nn.Module, head_names: tuple[str, ...], count: "TokenCount",
                   needs_input_grad: dict[int, bool] | None = None) -> float:
    """Model FLOPs of the training steps ``count`` counted (see the module doc). Input-side
    gradients of a body layer are counted where ``needs_input_grad`` (``InputGradProbe``) says its
    input required one; without it, wherever anything below the head trains."""
    body, encoder = _linear_layers(model, head_names)
    bwd = backward_through_body(model, head_names)
    per_position = 0
    for m in body:
        w = m.weight.numel()
        grad_in = bwd and (needs_input_grad or {}).get(id(m), needs_input_grad is None)
        per_position += 2 * w + (2 * w if grad_in else 0) + (2 * w if m.weight.requires_grad else 0)
    layers, d = attention_shape(model)
    attention = (4 + (8 if bwd else 0)) * layers * d * count.attended
    # a prompt encoder trains: forward, input and weight gradients for each row's virtual tokens
    prompt = 6 * sum(m.weight.numel() for m in encoder) * count.rows * max(count.extra_positions, count.extra_keys)
    return float(per_position * count.positions + attention + prompt)


def _precision(mixed_precision: str) -> str:
    return {"bf16": "bf16", "fp16": "fp16"}.get(mixed_precision, "fp32")


def _measure_matmul(device: torch.device, precision: str, size: int = 1024, min_s: float = 1.0) -> float:
    """The best of repeated ``size``² matmuls into a preallocated output (no allocation or page
    faults inside the timing), repeated for at least ``min_s`` seconds and 20 times: a figure taken
    from six products could land at half the peak when another process woke up meanwhile."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up
    best, start, n = float("inf"), time.perf_counter(), 0
    while n < 20 or time.perf_counter() - start < min_s:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best, n = min(best, time.perf_counter() - t0), n + 1
    return 2 * size**3 / best


def table_peak(device_name: str, precision: str) -> float | None:
    """The data-sheet peak FLOP/s of a listed GPU (the first entry its name contains), else None."""
    for key, table in PEAK_TFLOPS:
        if key in device_name:
            return table[precision] * 1e12 if precision in table else None
    return None


def peak_flops(device: torch.device, mixed_precision: str, achieved: float = 0.0) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from) for a run on ``device`` in its precision. A
    measured peak is cached per machine; one below what a run ``achieved`` was taken while the
    machine was busy, and is measured again (the higher figure kept)."""
    from peft_bench.assets.artifacts import cache_dir
    from peft_bench.core.environment import cpu_name

    precision = _precision(mixed_precision)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    listed = table_peak(name, precision) if device.type == "cuda" else None
    if listed:
        return listed, f"data sheet: {name} {precision} dense"
    threads = torch.get_num_threads()
    key = f"{device.type}|{name}|{precision}|{threads} threads|torch {torch.__version__}|best of >= 1 s"
    path = cache_dir() / "peak_flops.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if known.get(key, 0.0) <= achieved:
        with torch.random.fork_rng(devices=[]):  # the run's random state is not touched
            known[key] = max(known.get(key, 0.0), _measure_matmul(device, precision))
        write_whole(path, lambda f: f.write_text(json.dumps(known, indent=1, sort_keys=True)))
    return known[key], f"measured: best 1024² {precision} matmul, {threads} threads ({name})"


def throughput(model: nn.Module, head_names: tuple[str, ...], count: TokenCount, train_time_s: float,
               device: torch.device, mixed_precision: str, processes: int = 1,
               needs_input_grad: dict[int, bool] | None = None) -> dict:
    """The record's throughput figures (``results.schema.Resources``) from the count over all
    processes (``gather_counts``); the peak is one device's times the processes."""
    tokens = count.tokens
    if not count.positions or not train_time_s:
        return {}
    flops = training_flops(model, head_names, count, needs_input_grad)
    peak, source = peak_flops(device, mixed_precision, achieved=flops / train_time_s / processes)
    peak *= processes
    return {"train_tokens": tokens, "train_positions": count.positions, "tokens_per_s": tokens / train_time_s,
            "train_flops": flops, "flops_per_s": flops / train_time_s, "peak_flops_per_s": peak,
            "peak_flops_source": source + (f" x {processes} processes" if processes > 1 else ""),
            "mfu": flops / train_time_s / peak}


def gather_counts(accelerator, count: TokenCount) -> TokenCount:
    """The count summed over the processes of a launch (``count`` itself for one process)."""
    from peft_bench.engine.distributed import per_process

    if accelerator.num_processes == 1:
        return count
    tokens, rows, positions, attended = (int(sum(per_process(accelerator, v)))
                                         for v in (count.tokens, count.rows, count.positions, count.attended))
    return TokenCount(count.extra_positions, count.extra_keys, rows, positions, attended,
                      token_sums=[torch.tensor(tokens)])
