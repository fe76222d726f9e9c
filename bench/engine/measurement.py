"""Every metric of a run is computed here, in exactly one function each.

- parameters: ``count_parameters`` (trainable / total / head) and ``stored_size`` (what the saved
  artifact holds: tensor elements in its safetensors files, and bytes on disk of the folder);
- memory: ``MemoryMeter`` over one ``MemoryBaseline`` (CUDA: max allocated / reserved after a peak
  reset; CPU: the kernel's peak resident set size), and ``assets.models.make_resident`` (weights
  memory-mapped from safetensors count only once they are paged in);
- time: ``StepTimer`` (wall time, median step, examples/s) with device synchronisation;
- accuracy & co: ``compute_metrics`` through the task's `evaluate` modules, and
  ``majority_baseline``.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import gc
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from torch import nn

from peft_bench.interface.task import HIGHER_IS_BETTER, is_hit, load_metric


# -- parameters ------------------------------------------------------------------------------------
def count_parameters(method, model: nn.Module, head_names: tuple[str, ...]) -> dict[str, int]:
    """trainable (requires_grad; peft's count for peft models), total, and the trainable part of
    the task head (encoders train a fresh classification head with every method)."""
    from peft_bench.interface.method import all_parameters

    seen: set[int] = set()
    head = 0
    for name, module in model.named_modules():
        if name.split(".")[-1] in head_names:
            for p in module.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    head += p.numel()
    return {"trainable_params": method.trainable_parameters(model),
            "total_params": all_parameters(model), "trainable_head_params": head}


def stored_size(path: Path) -> dict[str, int]:
    """Parameters (tensor elements in *.safetensors) and bytes (all files) of a saved artifact."""
    from safetensors import safe_open

    n_params = n_bytes = 0
    for f in Path(path).rglob("*"):
        if not f.is_file():
            continue
        n_bytes += f.stat().st_size
        if f.suffix == ".safetensors":
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    n_params += _numel(sf.get_slice(k).get_shape())
    return {"stored_params": n_params, "stored_bytes": n_bytes}


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


# -- memory ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def gc_frozen():
    """Keep the objects that exist before a run (the imported libraries: millions of objects) out
    of the garbage collector's reach while it runs: each full ``gc.collect`` (``release_memory``,
    accelerate's ``free_memory``) then walks only the run's own objects. 0.25 s -> a few ms per
    collection here. Everything is handed back to the collector afterwards. Inside a caller's freeze
    (the test session freezes its imports) it leaves that freeze alone."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def release_memory() -> None:
    """Return freed memory to the OS so that the next RSS window starts clean (glibc keeps it)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS may include memory freed earlier
        pass


@dataclass
class MemoryBaseline:
    """What both memory windows of a run are measured against: the process with the prepared model
    on its device (base weights resident, the method's own weights added), before training.

    CPU: resident set size, and its anonymous (RssAnon: heap, tensors) and file-backed (RssFile:
    memory-mapped files such as safetensors weights) parts. CUDA: memory allocated and reserved by
    torch's caching allocator."""

    device_type: str
    bytes: int
    reserved_bytes: int | None = None  # CUDA
    rss_anon_bytes: int | None = None  # CPU (Linux)
    rss_file_bytes: int | None = None  # CPU (Linux)

    @classmethod
    def take(cls, device: torch.device) -> "MemoryBaseline":
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            return cls("cuda", torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device))
        parts = rss_parts()
        return cls("cpu", current_rss(), None, parts.get("RssAnon"), parts.get("RssFile"))

    def as_resources(self) -> dict[str, int | None]:
        return {"mem_baseline_bytes": self.bytes, "mem_baseline_reserved_bytes": self.reserved_bytes,
                "mem_baseline_rss_anon_bytes": self.rss_anon_bytes,
                "mem_baseline_rss_file_bytes": self.rss_file_bytes}


class MemoryMeter:
    """Peak memory above one ``MemoryBaseline``, over a ``with`` block.

    CUDA: torch.cuda.max_memory_allocated / max_memory_reserved after reset_peak_memory_stats,
    minus the baseline's allocated / reserved bytes.
    CPU (Linux): the kernel's own peak resident set size (VmHWM), reset at the start of the block by
    writing 5 to /proc/self/clear_refs, minus the baseline's RSS: exact, and free (no sampling
    thread preempting the compute threads; the sampler it replaced cost ~10% of a MiniLM training
    step on 2 cores). Elsewhere: RSS sampled every ``interval_s`` by a background thread.
    Without a baseline, the block's own start is the baseline.
    """

    def __init__(self, device: torch.device, baseline: MemoryBaseline | None = None, interval_s: float = 0.005):
        self.device, self.interval_s = device, interval_s
        self.baseline = baseline
        self.peak_bytes = 0
        self.peak_reserved_bytes: int | None = None
        self.kind = "cuda_allocated" if device.type == "cuda" else "cpu_rss_peak"

    def __enter__(self) -> "MemoryMeter":
        base = self.baseline or MemoryBaseline.take(self.device)
        self._base, self._base_reserved = base.bytes, base.reserved_bytes
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        proc = psutil.Process()
        self._thread = None
        if reset_peak_rss():
            return self
        self.kind = "cpu_rss_sampled"
        self._peak = proc.memory_info().rss
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._peak = max(self._peak, proc.memory_info().rss)
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = max(0, torch.cuda.max_memory_allocated(self.device) - self._base)
            self.peak_reserved_bytes = max(0, torch.cuda.max_memory_reserved(self.device) - self._base_reserved)
            return
        if self._thread is None:
            peak = peak_rss()
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, psutil.Process().memory_info().rss)
        self.peak_bytes = max(0, peak - self._base)


def rss_parts() -> dict[str, int]:
    """RssAnon / RssFile / RssShmem of this process in bytes (Linux; {} elsewhere)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux VmHWM) to its current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return peak_rss() > 0
    except OSError:
        return False


def peak_rss() -> int:
    """The kernel's peak resident set size of this process since start or the last reset (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def current_rss() -> int:
    return psutil.Process().memory_info().rss


# -- time ------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StepTimer:
    """Wall time of a loop and of each step, without a host sync per step.

    CPU: ``perf_counter`` at each step. CUDA runs asynchronously: a CUDA event is recorded at each
    step (no sync) and the step times are read from the events once, at the end; the loop's total
    is taken after a device sync. Per-step syncs would stall the launch queue and slow what we time.

    A step lasts from the end of the previous one (or the start of the block, or ``resume``) to
    ``step``. A loop that hands control away between steps (a generator driven step by step)
    calls ``resume`` when it gets control back, so that the other work is not counted in its
    next step; ``total_s`` stays the block's wall time.
    """

    device: torch.device
    step_times: list[float] = field(default_factory=list)
    examples: int = 0
    total_s: float = 0.0

    def __enter__(self) -> "StepTimer":
        synchronize(self.device)
        self._cuda = self.device.type == "cuda"
        self._spans: list = []  # CUDA: (start event, end event) per step
        self._t0 = time.perf_counter()
        self.resume()
        return self

    def resume(self) -> None:
        """The next step starts now."""
        if self._cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        self._last = time.perf_counter()

    def step(self, n_examples: int) -> None:
        self.examples += n_examples
        if self._cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._spans.append((self._start, end))
            self._start = end
            return
        now = time.perf_counter()
        self.step_times.append(now - self._last)
        self._last = now

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.total_s = time.perf_counter() - self._t0
        if self._cuda:
            self.step_times = [a.elapsed_time(b) / 1e3 for a, b in self._spans]
            self._spans = []

    @property
    def median_step_s(self) -> float | None:
        # the first step pays one-off costs (allocator warm-up, lazy init): leave it out when we can
        steps = self.step_times[1:] if len(self.step_times) > 1 else self.step_times
        return statistics.median(steps) if steps else None

    @property
    def examples_per_s(self) -> float | None:
        return self.examples / self.total_s if self.total_s > 0 else None


# -- task metrics ----------------------------------------------------------------------------------
def compute_metrics(names: tuple[str, ...], predictions: list, references: list) -> dict[str, dict]:
    """{metric: {value, stderr, higher_is_better}}; stderr is the binomial standard error for
    accuracy and exact match (over test examples) and null for metrics without a closed form.

    A reference that lists several right answers (``interface.task.is_hit``) is passed to the
    metric module as the prediction where the prediction is one of them, else as its first."""
    out = {}
    n = len(references)
    refs = [(p if is_hit(g, p) else g[0]) if isinstance(g, (list, tuple)) else g for g, p in zip(references, predictions)]
    for name in names:
        value = load_metric(name).compute(predictions=predictions, references=refs)[name]
        stderr = (value * (1 - value) / n) ** 0.5 if name in ("accuracy", "exact_match") and n else None
        out[name] = {"value": float(value), "stderr": stderr, "higher_is_better": HIGHER_IS_BETTER[name]}
    return out


def majority_baseline(train_labels: list, test_labels: list, val_labels: list | None = None) -> dict[str, object]:
    """Accuracy on test (and validation) of always giving the most frequent training answer (a class,
    a choice position, or an answer text)."""
    first = lambda y: y[0] if isinstance(y, (list, tuple)) else y  # noqa: E731
    majority = collections.Counter(first(y) for y in train_labels).most_common(1)[0][0]
    acc = lambda ys: sum(int(is_hit(y, majority)) for y in ys) / max(1, len(ys))  # noqa: E731
    return {"majority_class": majority, "majority_accuracy": acc(test_labels),
            "majority_val_accuracy": acc(val_labels) if val_labels else None}