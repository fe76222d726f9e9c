"""The plainest hand-written PyTorch + peft training loop: the reference ``peftbench bench-overhead``
holds the harness against (``studies.overhead``).

It reads the same cached split from disk, draws the same examples and batches (the same seeded
shuffle), builds the same network, trains it with the same AdamW, schedule and clipping for the
same steps, saves the adapter, evaluates the same test examples and writes one JSON line. Only the
network definition is shared: ``peft_bench.assets.models.use_mean_pooling`` (the same model must
be trained for the comparison to mean anything). Everything else here is written by hand.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import torch

from peft_bench.engine.distributed import cpu_threads  # the same thread count as the harness: a setting, not code on the timed path
from peft_bench.core.spec import RunSpec

PLAIN_METHODS = ("lora", "prompt_tuning")
# method settings the harness side runs with, so that both sides do the same work: the plain loop
# starts a soft prompt as the prompt_tuning plugin's `init = "random"` does (uniform(-0.5, 0.5)
# after peft's own init), not from class-label embeddings (method work the plain loop does not
# do). With the same init both sides reach the same loss, which the tests check.
SAME_WORK = {"prompt_tuning": {"init": "random"}}


def _peft_config(method: str, cfg) -> object:
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType

    if method == "lora":
        return LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout)
    if method == "prompt_tuning":  # the plugin's init = "random" (see SAME_WORK)
        return PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=cfg.num_virtual_tokens,
                                  prompt_tuning_init=PromptTuningInit.RANDOM)
    raise ValueError(f"`method` must be one of {', '.join(PLAIN_METHODS)} for the plain loop, got {method!r}.")


def plain_setup(spec: RunSpec, split_dir: str, model_path: str, method_cfg, num_labels: int = 2,
                mean_pooling: bool = True) -> SimpleNamespace:
    """The plain loop up to its first step: data, model, optimizer (written without the harness)."""
    import datasets
    from peft import get_peft_model
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer,
                              get_linear_schedule_with_warmup, set_seed)
    from transformers.utils import logging as hf_logging

    from peft_bench.assets.models import use_mean_pooling

    t0 = time.perf_counter()
    hf_logging.set_verbosity_error()  # the new classifier's "missing weights" report is expected
    cfg = spec.train
    torch.set_num_threads(cpu_threads(cfg.num_threads))
    splits = datasets.load_from_disk(split_dir)
    train = splits["train"].shuffle(seed=cfg.seed).select(range(min(cfg.n_train, len(splits["train"]))))
    test = splits["test"].select(range(min(cfg.n_test, len(splits["test"]))))
    tok = AutoTokenizer.from_pretrained(model_path)
    set_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels,
                                                               use_safetensors=True)
    if mean_pooling:
        use_mean_pooling(model)
    train_ids = tok(list(train["text"]), truncation=True, max_length=cfg.max_length)["input_ids"]
    test_ids = tok(list(test["text"]), truncation=True, max_length=cfg.max_length)["input_ids"]
    set_seed(cfg.seed)
    model = get_peft_model(model, _peft_config(spec.method, method_cfg))
    if spec.method == "prompt_tuning":
        with torch.no_grad():
            model.prompt_encoder["default"].embedding.weight.uniform_(-0.5, 0.5)
    head = [p for n, p in model.named_parameters() if p.requires_grad and "classifier" in n]
    body = [p for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n]
    opt = torch.optim.AdamW([{"params": body, "lr": method_cfg.lr}, {"params": head, "lr": cfg.head_lr}],
                            weight_decay=cfg.weight_decay)
    order = torch.utils.data.DataLoader(range(len(train_ids)), batch_size=cfg.batch_size, shuffle=True,
                                        generator=torch.Generator().manual_seed(cfg.seed), drop_last=True,
                                        collate_fn=lambda idx: idx)
    return SimpleNamespace(t0=t0, cfg=cfg, tok=tok, model=model, params=body + head, opt=opt,
                           sched=get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * cfg.steps), cfg.steps),
                           order=order, train_ids=train_ids, train_labels=list(train["label"]),
                           test_ids=test_ids, test_labels=list(test["label"]), step_times=[], losses=[])


def _collate(p: SimpleNamespace, idx, ids, labels):
    batch = p.tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"], torch.tensor([labels[i] for i in idx])


def plain_steps(p: SimpleNamespace) -> Iterator[int]:
    """The plain training loop, one step at a time (each step timed on its own)."""
    cfg, model = p.cfg, p.model
    model.train()
    it = iter(p.order)
    for step in range(cfg.steps):
        s = time.perf_counter()
        try:
            idx = next(it)
        except StopIteration:
            it = iter(p.order)
            idx = next(it)
        input_ids, mask, labels = _collate(p, idx, p.train_ids, p.train_labels)
        loss = torch.nn.functional.cross_entropy(model(input_ids=input_ids, attention_mask=mask).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(p.params, cfg.max_grad_norm)
        p.opt.step()
        p.sched.step()
        p.opt.zero_grad(set_to_none=True)
        p.losses.append(loss.detach())
        p.step_times.append(time.perf_counter() - s)
        yield step


def plain_finish(p: SimpleNamespace, out_dir: Path) -> dict:
    """Save the adapter, evaluate, write one JSON line."""
    cfg, model = p.cfg, p.model
    model.save_pretrained(Path(out_dir) / "plain_artifact")
    model.eval()
    e0 = time.perf_counter()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(p.test_ids), cfg.eval_batch_size):
            idx = range(i, min(i + cfg.eval_batch_size, len(p.test_ids)))
            input_ids, mask, labels = _collate(p, idx, p.test_ids, p.test_labels)
            correct += (model(input_ids=input_ids, attention_mask=mask).logits.argmax(-1) == labels).sum().item()
    eval_s = time.perf_counter() - e0
    result = {"accuracy": correct / len(p.test_ids), "final_loss": float(torch.stack(p.losses[-10:]).mean()),
              "step_time_median_s": statistics.median(p.step_times[1:]), "train_time_s": sum(p.step_times),
              "eval_examples_per_s": len(p.test_ids) / eval_s}
    with open(Path(out_dir) / "plain.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    result["run_wall_s"] = time.perf_counter() - p.t0
    return result


def plain_run(spec: RunSpec, split_dir: str, model_path: str, method_cfg, out_dir: Path, num_labels: int = 2,
              mean_pooling: bool = True) -> dict:
    """A minimal training + evaluation loop, written without the harness (see the module doc)."""
    p = plain_setup(spec, split_dir, model_path, method_cfg, num_labels, mean_pooling)
    for _ in plain_steps(p):
        pass
    return plain_finish(p, out_dir)
