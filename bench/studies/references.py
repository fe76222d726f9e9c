"""Two more references for ``peftbench bench-overhead``, each in lockstep with the harness's loop.

- ``transformers.Trainer``: what users would write instead of the harness. It trains the very model
  the harness prepares (``engine.prepare.prepare``: the same base model, method wrapping, pooling
  and initialisation) on the same encoded training examples, in the same batch order (the same
  seeded sampler), with its own default optimizer (``adamw_torch_fused`` since torch 2.8) at the
  harness's learning rates (task head apart, as the harness trains it), the same linear schedule,
  warm-up steps and clipping, and logs its loss every ``CHECK_EVERY`` steps, as the harness syncs
  its own. Encoders learn from their head's logits through the model's own loss (``labels``);
  causal LMs from the label word after the prompt, with every other position's label -100: the
  script a user writes for text-to-text classification (the model computes logits at every
  position; the harness computes them only where a label token is predicted).
  A callback holds ``Trainer.train`` after each optimizer step, so the two loops advance one step
  each, alternately; a step's time runs from the callback handing control back to the next step's
  end (its data loading, logging and callbacks included).
- The isolated run: the harness's training loop in a child forked from the run server exactly as
  a suite forks its runs (``execution.local._child``), against the same loop in this process.

Each reference runs in such a child and steps when told to over a pipe (``child_lockstep``).

Each in-process side keeps its own CPU random-number state (swapped between steps, outside the
timed steps), so each draws the dropout masks it would draw alone.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from types import SimpleNamespace
from typing import Iterator

import torch

from peft_bench.core.spec import RunSpec
from peft_bench.engine.loop import CHECK_EVERY


def interleave(sides: dict[str, tuple[Iterator, torch.Tensor]], steps: int) -> None:
    """Advance each side's step iterator one step at a time, alternately (A B, B A, ...), each with
    its own torch CPU random-number state (given: the state right after its set-up), then drain
    each to its end."""
    rng = {name: state for name, (_, state) in sides.items()}
    names = list(sides)

    def advance(name: str, to_end: bool = False) -> None:
        torch.set_rng_state(rng[name])
        for _ in sides[name][0]:
            if not to_end:
                break
        rng[name] = torch.get_rng_state()

    for k in range(steps):
        for name in (names if k % 2 == 0 else names[::-1]):
            advance(name)
    for name in names:
        advance(name, to_end=True)


def against_harness(run, reference: Iterator, harness_rng: torch.Tensor) -> "TrainOutcome":  # noqa: F821
    """The harness's training loop on the prepared ``run`` (random state ``harness_rng``, taken
    right after its set-up) in lockstep with ``reference`` (set up last: the current state is its);
    the harness's ``TrainOutcome``."""
    from peft_bench.engine.loop import train_steps

    box = {}

    def harness_side():
        box["outcome"] = yield from train_steps(run)

    interleave({"harness": (harness_side(), harness_rng), "reference": (reference, torch.get_rng_state())},
               run.spec.train.steps)
    return box["outcome"]


def _collator(run):
    """What a Trainer user writes for the run's model kind (see the module doc)."""
    from transformers import DataCollatorWithPadding

    if run.ctx.kind != "causal":
        return DataCollatorWithPadding(run.ctx.tokenizer)
    label_ids, pad = run.objective.label_ids, run.ctx.tokenizer.pad_token_id

    def collate(feats: list[dict]) -> dict[str, torch.Tensor]:
        seqs = [f["input_ids"] + label_ids[f["label"]] for f in feats]
        labels = [[-100] * len(f["input_ids"]) + label_ids[f["label"]] for f in feats]
        width = max(map(len, seqs))
        return {"input_ids": torch.tensor([s + [pad] * (width - len(s)) for s in seqs]),
                "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]),
                "labels": torch.tensor([y + [-100] * (width - len(y)) for y in labels])}

    return collate


class _SameOrder(torch.utils.data.Sampler):
    """The harness's training order (``engine.prepare``: a DataLoader shuffled by a seeded generator,
    which also draws each epoch's base seed from it), one example index at a time."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.loader = torch.utils.data.DataLoader(range(n), batch_size=batch_size, shuffle=True, drop_last=True,
                                                  generator=torch.Generator().manual_seed(seed), collate_fn=list)

    def __len__(self) -> int:
        return len(self.loader) * self.loader.batch_size

    def __iter__(self):
        for idx in self.loader:
            yield from idx


class _Handoff:
    """A Trainer callback that holds ``Trainer.train`` before its first step and after every
    optimizer step until told over ``conn`` to go on (answering "step" after each), and times each
    step from its resumption to its end."""

    def __init__(self, start_rng: torch.Tensor, conn):
        self.conn = conn
        self.step_times: list[float] = []
        self.start_rng: torch.Tensor | None = start_rng
        self.t = 0.0

    def on_train_begin(self, args, state, control, **kw):
        self.conn.recv()
        self.t = time.perf_counter()

    def on_epoch_begin(self, args, state, control, **kw):
        # Trainer reseeded at its start, and iterating its loader draws from the global generator
        # (the harness's loader draws from its own): each epoch's first step starts from the state
        # the harness would have (the one after ``prepare``, then the one after the last step)
        if state.global_step:
            self.start_rng = torch.get_rng_state()

    def on_step_begin(self, args, state, control, **kw):
        if self.start_rng is not None:
            torch.set_rng_state(self.start_rng)
            self.start_rng = None

    def on_step_end(self, args, state, control, **kw):
        self.step_times.append(time.perf_counter() - self.t)
        self.conn.send("step")
        self.conn.recv()
        self.t = time.perf_counter()


def trainer_setup(spec: RunSpec, out_dir: str, conn) -> SimpleNamespace:
    """A ``transformers.Trainer`` over the harness-prepared model and training examples."""
    import datasets
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from peft_bench.engine.prepare import head_params, prepare

    run = prepare(spec)
    start_rng = torch.get_rng_state()  # what the harness's own loop starts from after prepare
    cfg, accum = spec.train, spec.train.gradient_accumulation_steps
    keep = ["input_ids", "label"]
    train = datasets.Dataset.from_list([{k: e[k] for k in keep} for e in run.train_dl.dataset])
    head = head_params(run.model, run.ctx.head_names)
    body_lr = run.method.config.lr

    class SameOrderTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):  # the harness's seeded shuffle
            return _SameOrder(len(train), cfg.batch_size // accum, cfg.seed)

        def create_optimizer(self, model=None):  # Trainer's optimizer; the head at its own lr
            if self.optimizer is None:
                opt_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
                kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
                trainable = [p for p in self.model.parameters() if p.requires_grad]
                groups = [{"params": [p for p in trainable if id(p) not in head], "lr": body_lr},
                          {"params": [p for p in trainable if id(p) in head], "lr": cfg.head_lr}]
                self.optimizer = opt_cls([g for g in groups if g["params"]], weight_decay=cfg.weight_decay, **kwargs)
            return self.optimizer

    handoff = _Handoff(start_rng, conn)
    callback = type("HandoffCallback", (TrainerCallback,), {
        n: getattr(handoff, n) for n in ("on_train_begin", "on_epoch_begin", "on_step_begin", "on_step_end")})()
    args = TrainingArguments(
        output_dir=out_dir, max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size // accum,
        gradient_accumulation_steps=accum, learning_rate=body_lr, weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear", warmup_steps=int(cfg.warmup_ratio * cfg.steps), max_grad_norm=cfg.max_grad_norm,
        logging_steps=CHECK_EVERY, save_strategy="no", report_to="none", disable_tqdm=True, seed=cfg.seed,
        dataloader_drop_last=True, remove_unused_columns=False, use_cpu=run.device.type == "cpu",
        bf16=cfg.mixed_precision == "bf16", fp16=cfg.mixed_precision == "fp16")
    trainer = SameOrderTrainer(model=run.model, args=args, train_dataset=train, data_collator=_collator(run),
                               callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # its log lines would interleave with the benchmark's
    return SimpleNamespace(trainer=trainer, handoff=handoff, steps=cfg.steps)


def _child_steps(spec: RunSpec, side: str, conn) -> dict:
    """In a child forked from the run server: ``side``'s training loop ("harness": the harness's,
    "trainer": ``Trainer.train``, in this process's main thread: a loop driven from another thread
    ran 25% slower here, harness and Trainer alike), one step per "go" message, each answered
    "step", then "end"; its step times and mean loss."""
    from peft_bench.engine.loop import train_steps
    from peft_bench.engine.prepare import prepare

    if side == "trainer":
        with tempfile.TemporaryDirectory() as tmp:
            t = trainer_setup(spec, tmp, conn)
            conn.send("ready")
            t.trainer.train()  # the callback steps it (``_Handoff``)
            conn.send("end")
        # the mean loss over all steps, what Trainer reports at its end
        total = [e["train_loss"] for e in t.trainer.state.log_history if "train_loss" in e]
        return {"step_times": t.handoff.step_times, "loss": total[-1] if total else float("nan")}
    steps = train_steps(prepare(spec))
    conn.send("ready")
    while True:
        conn.recv()
        try:
            next(steps)
        except StopIteration as done:
            conn.send("end")
            return {"step_times": done.value.timer.step_times, "loss": statistics.fmean(done.value.losses)}
        conn.send("step")


def child_lockstep(spec: RunSpec, side: str, timeout_s: float = 600.0) -> dict:
    """The harness's loop in this process in lockstep with ``side``'s loop in a child forked from
    the run server exactly as a suite forks a run (``execution.local._child``): "trainer"
    (``Trainer.train``) or "harness" (the harness's own loop: what process isolation costs). Each
    side in its own process: two loops in one process would each keep their own OpenMP thread
    team, and a team spinning after its step slows the other's (measured: steps up to 1.8x
    slower, on both sides). Returns "harness_step_s" / "harness_loss" for the harness (for
    "harness", the isolated one) and "reference_..." for the other side."""
    from peft_bench.engine.prepare import prepare
    from peft_bench.execution import local, server

    ctx = server.context()
    result_r, result_w = ctx.Pipe(duplex=False)
    here, there = ctx.Pipe()
    proc = ctx.Process(target=local._child, args=(_child_steps, (spec, side, there), None, result_w), daemon=True)
    proc.start()
    result_w.close()
    there.close()
    try:
        if not here.poll(timeout_s) or here.recv() != "ready":
            raise RuntimeError(f"the {side} child never became ready")
        run = prepare(spec)
        rng = torch.get_rng_state()

        def child():
            while True:
                here.send("go")
                if not here.poll(timeout_s):
                    raise RuntimeError(f"the {side} child stopped answering")
                if here.recv() == "end":
                    return
                yield

        h = against_harness(run, child(), rng)
        if not result_r.poll(timeout_s):
            raise RuntimeError(f"the {side} child sent no result")
        other = result_r.recv()
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    here_ = {"step_s": statistics.median(h.timer.step_times[1:]), "loss": statistics.fmean(h.losses)}
    there_ = {"step_s": statistics.median(other["step_times"][1:]), "loss": other["loss"]}  # first step: one-off costs
    harness, reference = (there_, here_) if side == "harness" else (here_, there_)
    return {"harness_step_s": harness["step_s"], "reference_step_s": reference["step_s"],
            "harness_loss": harness["loss"], "reference_loss": reference["loss"]}


def same_work(spec: RunSpec, extra: dict) -> RunSpec:
    """``spec`` with method settings merged in and no validation (no reference validates)."""
    return dataclasses.replace(spec, method_config={**spec.method_config, **extra},
                               train=dataclasses.replace(spec.train, eval_points=0),
                               resolved_config=None, data=None).resolve()
