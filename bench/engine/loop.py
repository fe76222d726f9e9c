"""The training loop and evaluation: the same for every method (AdamW, linear schedule, clipping).

bench/ never branches on the method name: methods differ only through their plugin hooks.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Generator

import torch

from peft_bench.engine.measurement import MemoryMeter, StepTimer, compute_metrics, release_memory
from peft_bench.engine.prepare import Prepared, head_params
from peft_bench.engine.throughput import InputGradProbe, TokenCount


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class Predictions:
    """One split's per-example outcome, in the loader's order: stable example ids, gold and
    predicted answers, and every class's or choice's score (logits, or log-likelihoods; none for
    generated answers)."""

    ids: list[str]
    gold: list  # a class index, or a list of right answers (``interface.task.is_hit``)
    pred: list  # a class / choice index, or a normalised generated answer
    scores: list[list[float]]

    def as_dict(self) -> dict:
        return {"ids": self.ids, "gold": self.gold, "pred": self.pred,
                "scores": [[round(x, 5) if math.isfinite(x) else None for x in row] for row in self.scores]}


@dataclass
class TrainOutcome:
    losses: list[float]
    timer: StepTimer
    memory: MemoryMeter
    # validation at each evaluation point: (step, {metric: {value, stderr, ...}}); the last one's
    # predictions are kept (what the run is selected on), and the time it all took (not training's)
    validation: list[tuple[int, dict]] = field(default_factory=list)
    val_predictions: Predictions | None = None
    val_time_s: float = 0.0
    tokens: TokenCount = field(default_factory=TokenCount)  # what the training steps fed the model
    needs_input_grad: dict[int, bool] | None = None  # per body linear layer (``engine.throughput``)


def eval_steps(steps: int, points: int) -> set[int]:
    """The steps (1-based) after which validation is evaluated: ``points`` evenly spaced, the last
    after the final step."""
    return {max(1, round(k * steps / points)) for k in range(1, points + 1)} if points else set()


def train(run: Prepared) -> TrainOutcome:
    """The training loop: the same for every method (AdamW, linear schedule, clipping).

    One step = ``gradient_accumulation_steps`` micro-batches (gradients synchronised across
    processes only on the last one), then one optimizer step. The recorded loss of a step is the
    mean over its examples on all processes.
    """
    return run_to_end(train_steps(run))


def run_to_end(steps: Generator):
    """Advance a step generator to its end; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def train_steps(run: Prepared) -> Generator[int, None, TrainOutcome]:
    """``train`` one optimizer step at a time: yields each step's index after the step, returns the
    ``TrainOutcome``. Time spent away from the generator is not counted in any step (the overhead
    benchmark interleaves the harness's steps with a plain loop's, one by one)."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    cfg, acc, model, objective = run.spec.train, run.accelerator, run.model, run.objective
    accum = cfg.gradient_accumulation_steps
    # --- optimizer: AdamW for all; the task head (encoders) trains at `head_lr` for every method --
    head_ids = head_params(model, run.ctx.head_names)
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in head_ids], "lr": run.method.config.lr},
              {"params": [p for p in trainable if id(p) in head_ids], "lr": cfg.head_lr}]
    groups = [g for g in groups if g["params"]]
    local: list[torch.Tensor] = []  # this process's step losses, not yet averaged over processes
    losses: list[float] = []
    at = eval_steps(cfg.steps, cfg.eval_points) if run.val_dl is not None else set()
    with MemoryMeter(run.device, run.baseline) as mem, StepTimer(run.device) as timer:
        out = TrainOutcome(losses, timer, mem, tokens=TokenCount(*run.method.virtual_tokens(model)))
        if not groups:  # nothing to train (zero-shot baseline): validated as it is
            if run.val_dl is not None:
                _validate(run, model, acc.prepare(run.val_dl), 0, out)
            return out
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=fused_adamw(trainable))
        scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * cfg.steps), cfg.steps)
        model, optimizer, train_dl = acc.prepare(model, optimizer, run.train_dl)
        val_dl = acc.prepare(run.val_dl) if at else None
        run.model = model
        if acc.num_processes > 1:  # DDP made the weights equal; dropout masks differ per process
            set_seed(cfg.seed, device_specific=True)  # (seed + process index: unchanged for one)
        model.train()
        batches = _cycle(train_dl)
        bar = tqdm(range(cfg.steps), desc=f"train {run.spec.method} {run.spec.task}", leave=False,
                   dynamic_ncols=True, disable=None if acc.is_local_main_process else True)
        for step in bar:
            step_loss = None
            for micro in range(accum):
                batch = next(batches)
                out.tokens.add(batch)
                probe = InputGradProbe(acc.unwrap_model(model), run.ctx.head_names) if step == micro == 0 else None
                # DDP: no gradient all-reduce until the step's last micro-batch
                with contextlib.nullcontext() if micro == accum - 1 else acc.no_sync(model):
                    with acc.autocast():
                        loss = objective.loss(model, batch) / accum
                        reg = run.method.regularization(model)
                    if probe is not None:  # the first forward only: which layers need input gradients
                        probe.remove()
                        out.needs_input_grad = probe.needs
                    acc.backward(loss if reg is None else loss + reg / accum)
                step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
            if cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            run.method.after_step(model)
            optimizer.zero_grad(set_to_none=True)
            local.append(step_loss)
            timer.step(cfg.batch_size)
            if step + 1 in at:  # outside every step's time (the clock restarts below)
                _validate(run, model, val_dl, step + 1, out)
            yield step
            timer.resume()  # the clock restarts: what the caller did between two steps is not this loop's
            if (step + 1) % CHECK_EVERY == 0 or step + 1 == cfg.steps:
                # one host sync (and one all-reduce) per CHECK_EVERY steps, not one per step
                block = acc.reduce(torch.stack(local), "mean") if acc.num_processes > 1 else torch.stack(local)
                losses.extend(block.tolist())
                local.clear()
                _check_finite(losses, cfg.steps)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
        del optimizer, scheduler
    return out


CHECK_EVERY = 10  # steps between host syncs of the loss (NaN/inf check, progress bar)


def fused_adamw(params: list[torch.Tensor]) -> bool | None:
    """AdamW's fused kernel (all parameters in one kernel, as ``transformers.Trainer``'s default
    ``adamw_torch_fused``) where torch has it: floating-point parameters on CPU or CUDA; else
    None (torch's own choice, foreach)."""
    ok = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return True if ok else None


def _check_finite(losses: list[float], steps: int) -> None:
    """Raise ``Diverged`` naming the first step whose loss is NaN/inf. The losses are averaged over
    processes first, so every process of a launch stops at the same step (none is left waiting
    in a collective). A diverged run wastes at most CHECK_EVERY - 1 steps before it stops."""
    window = losses[-CHECK_EVERY:]
    for i, v in enumerate(window):
        if not math.isfinite(v):
            raise Diverged(f"loss became {v} at step {len(losses) - len(window) + i + 1} of {steps}.")


def predict(run: Prepared, model, loader, examples: list[dict], desc: str) -> Predictions:
    """Every example of ``loader`` (``examples``: its encodings, in its order) predicted, in
    inference mode. Under a launch each process predicts its slice of every batch and the outputs
    are gathered (padding duplicates dropped): every process gets the whole split, in order."""
    from tqdm.auto import tqdm

    acc, objective = run.accelerator, run.objective
    outputs = []
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
                          disable=None if acc.is_local_main_process else True):
            with acc.autocast():
                out = objective.outputs(model, batch)
            outputs.append(acc.gather_for_metrics(out.float() if out.is_floating_point() else out))
    width = max(o.shape[1] for o in outputs) if outputs else 0  # choice tasks: batches differ in width
    pred, scores = objective.decode(torch.cat([torch.nn.functional.pad(o, (0, width - o.shape[1]), value=(
        float("-inf") if o.is_floating_point() else -1)) for o in outputs]))
    if len(pred) != len(examples):
        raise RuntimeError(f"{desc}: {len(pred)} predictions for {len(examples)} examples.")
    return Predictions(ids=[e["id"] for e in examples], gold=[objective.gold(e["label"]) for e in examples],
                       pred=pred, scores=scores)


def _validate(run: Prepared, model, loader, step: int, out: TrainOutcome) -> None:
    """Validation metrics after ``step`` (the model back in training mode afterwards). Training goes
    on exactly as without it: dropout is off, and the random number generators are put back as
    they were (iterating a DataLoader draws its base seed from torch's global generator)."""
    t0 = time.perf_counter()
    inner = run.accelerator.unwrap_model(model)
    was_training = inner.training
    inner.eval()
    cuda = [run.device] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        p = predict(run, inner, loader, run.val_examples, f"validate {run.spec.method} {run.spec.task}")
    inner.train(was_training)
    out.validation.append((step, compute_metrics(run.task.metrics, p.pred, p.gold)))
    out.val_predictions = p
    out.val_time_s += time.perf_counter() - t0


def evaluate(run: Prepared) -> tuple[dict[str, dict], Predictions, StepTimer, MemoryMeter]:
    """Metrics on the held-out test split, in inference mode, with its own memory window, and the
    per-example predictions they were computed from."""
    acc = run.accelerator
    model = acc.unwrap_model(run.model)  # evaluation needs no DDP wrapper (no gradients to sync)
    for p in model.parameters():
        p.grad = None
    acc.free_memory()  # drops accelerate's references to the optimizer and its state
    release_memory()
    model.eval()
    test_dl = acc.prepare(run.test_dl)
    with MemoryMeter(run.device, run.baseline) as mem, StepTimer(run.device) as ev:
        p = predict(run, model, test_dl, run.test_examples, f"eval {run.spec.method} {run.spec.task}")
        ev.step(len(p.gold))
    return compute_metrics(run.task.metrics, p.pred, p.gold), p, ev, mem


def _cycle(loader):
    while True:  # a fresh shuffle every epoch (the sampler's generator is seeded)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:  # never spin on a loader that yields nothing
            raise RuntimeError("the training loader yields no batch (fewer examples than one batch).")


