"""The method plugin interface: every fine-tuning method implements these few hooks.

Life-cycle of an artifact (what a method trains and stores for one task):

    model = method.prepare(base, ctx)          # make the base trainable the method's way
    ... bench trains `model` ...
    method.save(model, dir)                    # write the artifact (safetensors only)
    model = method.load(model_or_base, dir, ctx, name="task_b")   # load another artifact
    method.activate(model, "task_b")           # serve it

bench/ never branches on the method name: every difference goes through these hooks.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from peft_bench.core.config import check, opt
from peft_bench.interface.task import TaskSpec


class MixedBatchUnsupported(NotImplementedError):
    """One forward pass of this method cannot serve rows of different tasks."""


@dataclass
class MethodConfig:
    """Fields every method has. Subclasses add their own, each with a default and help."""

    lr: float = opt(1e-3, "peak learning rate (AdamW, linear warm-up then decay)")

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", "positive", self.lr)


@dataclass
class ModelContext:
    """What a method may need to know about the model and task it adapts."""

    kind: str  # "encoder" (classification head) or "causal" (rank classification)
    tokenizer: Any
    task: TaskSpec
    head_names: tuple[str, ...]  # modules of the task head (trained by every method)
    reload: Callable[[str], nn.Module]  # load a full model of this kind from a saved directory
    train_texts: list[str] = field(default_factory=list)  # a sample of training inputs
    train_steps: int = 0  # optimizer steps the run will take (0: not training, e.g. serving)


class Method(abc.ABC):
    """Base class of a method plugin. Register with ``@register_method("name")``."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    description: ClassVar[str] = ""
    trains: ClassVar[bool] = True  # False: nothing to train (a zero-shot baseline), nothing to search
    # why this method cannot run with peft-bench's models and tasks at all ("" = it can); a suite
    # naming it is refused before anything runs, `peftbench list` shows the reason
    unavailable: ClassVar[str] = ""
    # the model kinds it runs on, and why not on the others (a suite pairing it with one is refused)
    model_kinds: ClassVar[tuple[str, ...]] = ("encoder", "causal")
    kind_reason: ClassVar[str] = ""

    @classmethod
    def refusal(cls, kind: str | None = None, config: MethodConfig | None = None) -> str:
        """Why this method cannot run (on a model of ``kind``, with ``config``, when given); "" when it
        can. A method whose configs differ in this overrides it (and calls it first)."""
        if cls.unavailable:
            return f"method {cls.name!r} cannot run here: {cls.unavailable}"
        if kind is not None and kind not in cls.model_kinds:
            return (f"method {cls.name!r} runs on {' and '.join(cls.model_kinds)} models only"
                    + (f" ({cls.kind_reason})" if cls.kind_reason else ""))
        return ""

    def __init__(self, config: MethodConfig | None = None):
        self.config = config if config is not None else self.config_cls()

    @abc.abstractmethod
    def prepare(self, model: nn.Module, ctx: ModelContext) -> nn.Module:
        """Turn the loaded base model into the model to train.

        Returns a module whose forward takes ``input_ids`` (B, L) and ``attention_mask`` (B, L)
        and returns ``.logits``: (B, num_labels) for encoders, (B, V + L, vocab) for causal LMs,
        where V >= 0 virtual tokens may be prepended (callers read the last L positions). Exactly
        the parameters this method trains have ``requires_grad=True``.
        """

    @abc.abstractmethod
    def save(self, model: nn.Module, path: Path) -> None:
        """Write the artifact of the active task to directory ``path`` (safetensors + json)."""

    @abc.abstractmethod
    def load(self, model: nn.Module, path: Path, ctx: ModelContext, name: str) -> nn.Module:
        """Load the artifact in ``path`` under adapter ``name`` and make it active.

        ``model`` is either the plain base model or a model this method already prepared or
        loaded into (then the artifact is added beside the ones already there). Returns the model.
        """

    @abc.abstractmethod
    def activate(self, model: nn.Module, name: str) -> nn.Module:
        """Make the artifact loaded under ``name`` the one that serves. Returns the model."""

    def unload(self, model: nn.Module, name: str) -> nn.Module:
        """Remove the artifact loaded under ``name`` (and free its memory). Returns the model."""
        raise NotImplementedError(f"method {self.name!r} does not implement `unload`.")

    def forward_mixed(self, model: nn.Module, input_ids, attention_mask, adapter_names: list[str]):
        """Serve row i of one batch with the artifact loaded under ``adapter_names[i]``.

        Same inputs and ``.logits`` as ``prepare``'s forward. Raises ``MixedBatchUnsupported``
        (with the reason) where one forward pass cannot serve several artifacts: a method must
        never silently serve every row with one artifact.
        """
        raise MixedBatchUnsupported(f"method {self.name!r} cannot serve a mixed-task batch in one forward pass.")

    # Where ``forward_mixed`` is a path written here in place of the library's own (LoRA: a gathered
    # per-row product instead of peft's loop over adapters), the library's path as a method with
    # the same signature, so that serving measurements time both side by side; None otherwise.
    forward_mixed_reference: ClassVar[Callable | None] = None

    def trainable_parameters(self, model: nn.Module) -> int:
        """Parameters with requires_grad (peft's own count for peft models)."""
        if hasattr(model, "get_nb_trainable_parameters"):
            return int(model.get_nb_trainable_parameters()[0])
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    def after_step(self, model: nn.Module) -> None:
        """Hook called after each optimizer step, before the gradients are cleared (they still hold
        the step's gradients: AdaLoRA's rank allocation reads them); default: nothing."""

    def regularization(self, model: nn.Module):
        """A term added to each micro-batch's training loss (a tensor), or None (the default). It is
        optimised but not recorded: the recorded loss is the task's alone, comparable across methods."""
        return None

    def virtual_tokens(self, model: nn.Module) -> tuple[int, int]:
        """(positions, keys) the method adds to every row the body processes, for the FLOP count
        of ``engine.throughput``: a soft prompt adds V of each, a prefix V keys; default: none."""
        return 0, 0


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def assert_safetensors_only(path: Path) -> None:
    """Artifacts are loaded only from safetensors (loading a pickle can run arbitrary code), and
    only from their own folder (no symlink out of it)."""
    root = Path(path).resolve()
    outside = [str(f) for f in Path(path).rglob("*") if f.is_symlink() and not f.resolve().is_relative_to(root)]
    if outside:
        raise ValueError(f"refusing to load artifact {path}: symlink(s) pointing outside its folder: {outside[:3]}.")
    files = [f for f in Path(path).rglob("*") if f.is_file()]
    pickles = [f.name for f in files if f.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise ValueError(f"refusing to load artifact {path}: it holds pickle file(s) {pickles[:3]}; "
                         f"peft-bench loads weights from .safetensors only.")
    if not any(f.suffix == ".safetensors" for f in files):
        raise ValueError(f"artifact {path} has no .safetensors file (found: {sorted(f.name for f in files)[:5]}).")


def all_parameters(model: nn.Module) -> int:
    if hasattr(model, "get_nb_trainable_parameters"):
        return int(model.get_nb_trainable_parameters()[1])
    return sum(p.numel() for p in model.parameters())


def stack_as_storage(params: list[torch.Tensor]) -> torch.Tensor:
    """``params`` (same shape) stacked along a new first dimension into one tensor that becomes
    their storage: each parameter is re-pointed at its row, so the stack is no second copy and an
    in-place change of a parameter is the stack's. Built outside inference mode (a normal tensor
    the parameters can live in). For mixed batches that gather each row's weights (serving only:
    autograd does not see the stack as the parameters)."""
    with torch.inference_mode(False), torch.no_grad():
        stack = torch.stack([p.detach() for p in params])
        for i, p in enumerate(params):
            p.data = stack[i]
    return stack


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def unfreeze_head(model: nn.Module, ctx: ModelContext) -> list[str]:
    """Make the task head trainable (encoders); returns the names of the head modules found."""
    found = []
    for name, module in model.named_modules():
        if name.split(".")[-1] in ctx.head_names:
            for p in module.parameters():
                p.requires_grad_(True)
            found.append(name)
    return found
