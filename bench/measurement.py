"""Every metric of a run is computed here, in exactly one function each.

- parameters: ``count_parameters`` (trainable / total / head) and ``stored_size`` (what the saved
  artifact holds: tensor elements in its safetensors files, and bytes on disk of the folder);
- memory: ``MemoryMeter`` (CUDA: max allocated / reserved after a peak reset, minus the baseline;
  CPU: peak resident set size sampled by a thread, minus the baseline);
- time: ``StepTimer`` (wall time, median step, examples/s) with device synchronisation;
- accuracy & co: ``compute_metrics`` through the task's `evaluate` modules, and
  ``majority_baseline``.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import gc
import os
import platform
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import psutil
import torch
from torch import nn

from bench.task import HIGHER_IS_BETTER, load_metric


# -- parameters ------------------------------------------------------------------------------------
def count_parameters(method, model: nn.Module, head_names: tuple[str, ...]) -> dict[str, int]:
    """trainable (requires_grad; peft's count for peft models), total, and the trainable part of
    the task head (encoders train a fresh classification head with every method)."""
    from bench.method import all_parameters

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
    collection here. Everything is handed back to the collector afterwards."""
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


class MemoryMeter:
    """Peak memory above a baseline, over a ``with`` block.

    CUDA: torch.cuda.max_memory_allocated / max_memory_reserved after reset_peak_memory_stats.
    CPU (Linux): the kernel's own peak resident set size (VmHWM), reset at the start of the block by
    writing 5 to /proc/self/clear_refs: exact, and free (no sampling thread preempting the compute
    threads; the sampler it replaced cost ~10% of a MiniLM training step on 2 cores). Elsewhere:
    RSS sampled every ``interval_s`` by a background thread.
    """

    def __init__(self, device: torch.device, baseline_rss: int | None = None, interval_s: float = 0.005):
        self.device, self.interval_s = device, interval_s
        self.baseline_rss = baseline_rss
        self.peak_bytes = 0
        self.peak_reserved_bytes: int | None = None
        self.kind = "cuda_allocated" if device.type == "cuda" else "cpu_rss_peak"

    def __enter__(self) -> "MemoryMeter":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self._base_reserved = torch.cuda.memory_reserved(self.device)
            return self
        proc = psutil.Process()
        self._base = self.baseline_rss if self.baseline_rss is not None else proc.memory_info().rss
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
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
            self.peak_reserved_bytes = torch.cuda.max_memory_reserved(self.device) - self._base_reserved
            return
        if self._thread is None:
            peak = peak_rss()
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, psutil.Process().memory_info().rss)
        self.peak_bytes = max(0, peak - self._base)


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
def compute_metrics(names: tuple[str, ...], predictions: list[int], references: list[int]) -> dict[str, dict]:
    """{metric: {value, stderr, higher_is_better}}; stderr is the binomial standard error for
    accuracy (over test examples) and null for metrics without a closed form."""
    out = {}
    n = len(references)
    for name in names:
        value = load_metric(name).compute(predictions=predictions, references=references)[name]
        stderr = (value * (1 - value) / n) ** 0.5 if name == "accuracy" and n else None
        out[name] = {"value": float(value), "stderr": stderr, "higher_is_better": HIGHER_IS_BETTER[name]}
    return out


def majority_baseline(train_labels: list[int], test_labels: list[int]) -> dict[str, float]:
    """Accuracy on test of always predicting the most frequent training class."""
    majority = collections.Counter(train_labels).most_common(1)[0][0]
    acc = sum(int(y == majority) for y in test_labels) / max(1, len(test_labels))
    return {"majority_class": int(majority), "majority_accuracy": acc}


# -- environment -----------------------------------------------------------------------------------
PACKAGES = ("torch", "transformers", "peft", "datasets", "evaluate", "accelerate", "peft-bench")


def git_state(root: Path | None = None) -> dict[str, object]:
    root = root or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"git_commit": commit, "git_dirty": dirty if commit else None}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a record names (read once per process: the run server
    reads them before forking runs)."""
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return versions


def environment(device: torch.device) -> dict[str, object]:
    return {
        "packages": dict(package_versions()),
        "python": platform.python_version(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "hostname": platform.node(),
        **git_state(),
    }
