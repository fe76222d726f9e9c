"""Forgetting (causal LMs): how much worse the adapted model models general English text.

As peft's method comparison measures it: the language-modelling loss on a fixed sample of general
text, with the run's adapter (or fine-tuned weights) active, minus the base model's on the same
tokens. Positive = the model got worse at general text. In nats per token.

The sample: the first ``N_DOCS`` documents of the Lee background corpus (300 news articles of the
Australian Broadcasting Corporation, shipped as gensim's test data), each cut to ``MAX_TOKENS``
tokens by the model's tokenizer; every next-token prediction inside a document counts once.
Virtual tokens a method prepends are context, never predicted (the logits of the last L positions
are read, as for the task itself).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from peft_bench.assets.artifacts import PackageArtifact, fetch

GENERAL_TEXT = PackageArtifact("gensim", "4.3.3", "d662bf96e3d741b6ab61a54be842a7cbf5e45193008b2f4225c758cafd7f9cdc",
                               "gensim/test/test_data/lee_background.cor", "LGPL-2.1")
N_DOCS, MAX_TOKENS, BATCH = 24, 128, 8
SOURCE = (f"first {N_DOCS} documents of the Lee background corpus (ABC news; {GENERAL_TEXT.requirement}: "
          f"{GENERAL_TEXT.member}), {MAX_TOKENS} tokens each at most")


@dataclass
class GeneralText:
    batches: list[tuple[torch.Tensor, torch.Tensor]]  # (input_ids, attention_mask), right-padded
    tokens: int  # next-token predictions scored


def general_text(tokenizer) -> GeneralText:
    docs = fetch(GENERAL_TEXT).read_text(encoding="utf-8").splitlines()[:N_DOCS]
    ids = [tokenizer(d, add_special_tokens=False)["input_ids"][:MAX_TOKENS] for d in docs]
    batches = []
    for i in range(0, len(ids), BATCH):
        enc = tokenizer.pad([{"input_ids": x} for x in ids[i:i + BATCH]], return_tensors="pt")
        batches.append((enc["input_ids"], enc["attention_mask"]))
    return GeneralText(batches, sum(len(x) - 1 for x in ids))


@torch.inference_mode()
def lm_loss(model: torch.nn.Module, text: GeneralText, device: torch.device) -> float:
    """Mean next-token negative log-likelihood over the sample (nats per token)."""
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for ids, mask in text.batches:
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            logits = logits[:, logits.shape[1] - ids.shape[1]:-1].float()  # the row's own positions
            target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            total += torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100,
                                                       reduction="sum").item()
    finally:
        model.train(was_training)
    return total / text.tokens


class Forgetting:
    """The base model's loss, taken before the method touches it; ``measure`` after training."""

    def __init__(self, base_model: torch.nn.Module, tokenizer, device: torch.device):
        t0 = time.perf_counter()
        self.text = general_text(tokenizer)
        self.base_loss = lm_loss(base_model.to(device), self.text, device)
        self.time_s = time.perf_counter() - t0

    def measure(self, model: torch.nn.Module, device: torch.device) -> dict:
        t0 = time.perf_counter()
        adapted = lm_loss(model, self.text, device)
        self.time_s += time.perf_counter() - t0
        return {"general_loss_base": self.base_loss, "general_loss_adapted": adapted,
                "forgetting": adapted - self.base_loss, "forgetting_time_s": self.time_s}
