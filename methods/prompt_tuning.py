"""Prompt tuning (Lester et al. 2021): trainable soft-prompt vectors prepended to the input embeddings.

Inits: ``class_label`` (the paper's best, which peft lacks: virtual token i starts as the embedding of
label word i, averaged over its sub-tokens; tokens past the number of labels start as embeddings
sampled among the 5,000 most frequent tokens of the task's training text), ``sample_frequent``
(the paper's sampled vocabulary: every virtual token the embedding of a token drawn uniformly from
the 5,000 most frequent; the paper ranked T5's vocabulary by its pretraining corpus, which is not
available offline, so the frequencies are counted on the task's training text), ``text`` (peft:
the tokens of ``init_text``, repeated), ``sample_vocab`` (peft: embeddings of tokens drawn from
the whole vocabulary) and ``random`` (uniform in [-0.5, 0.5], as in the paper; peft's own RANDOM
is N(0, 1)).
"""

from __future__ import annotations

import collections
import tempfile
from dataclasses import dataclass
from typing import Literal

import torch
from peft import PromptTuningConfig as PeftPromptTuningConfig
from peft import PromptTuningInit

from peft_bench import (
    ModelContext, PeftMethod, VirtualTokenConfig, check, opt, prompt_bank_forward,
    register_method, task_type,
)

TOP_FREQUENT = 5000


@dataclass
class PromptTuningConfig(VirtualTokenConfig):
    lr: float = opt(3e-2, "peak learning rate of the soft prompt (far higher than full fine-tuning)")
    num_virtual_tokens: int = opt(20, "soft-prompt length in tokens (paper: 1-150, little gain past 20)")
    init: Literal["class_label", "sample_frequent", "text", "sample_vocab", "random"] = opt(
        "class_label", "how the soft prompt starts: class_label (label-word embeddings) | sample_frequent (the "
                       "paper's: tokens drawn from the 5,000 most frequent) | text | sample_vocab (peft's: drawn from "
                       "the whole vocabulary) | random (uniform in [-0.5, 0.5])")
    init_text: str = opt("Classify the text into one of the labels.", "text for init='text'")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.init != "text" or bool(self.init_text.strip()), "init_text",
              "non-empty when init='text'", self.init_text)


def frequent_token_ids(ctx: ModelContext, k: int = TOP_FREQUENT) -> list[int]:
    """The k most frequent non-special token ids in the task's training text (ties: lower id)."""
    tok = ctx.tokenizer
    counts: collections.Counter = collections.Counter()
    for ids in tok(ctx.train_texts, add_special_tokens=False)["input_ids"]:
        counts.update(ids)
    special = set(tok.all_special_ids)
    ranked = sorted((i for i in counts if i not in special), key=lambda i: (-counts[i], i))
    if not ranked:  # no training text given: fall back to the lowest non-special ids
        ranked = [i for i in range(len(tok)) if i not in special]
    return ranked[:k]


def sample_frequent(embeddings: torch.Tensor, ctx: ModelContext, n_tokens: int) -> list[torch.Tensor]:
    """Embeddings of ``n_tokens`` tokens drawn uniformly (with replacement) from the most frequent."""
    if n_tokens <= 0:
        return []
    pool = torch.tensor(frequent_token_ids(ctx), dtype=torch.long)
    return list(embeddings[pool[torch.randint(len(pool), (n_tokens,))]])


def class_label_init(embeddings: torch.Tensor, ctx: ModelContext, n_tokens: int) -> torch.Tensor:
    """(n_tokens, hidden) initial prompt: label-word embeddings, then frequent-token embeddings."""
    prefix = ctx.task.target_prefix if ctx.kind == "causal" else ""
    rows = []
    for word in ctx.task.label_words[:n_tokens]:
        ids = ctx.tokenizer(prefix + word, add_special_tokens=False)["input_ids"]
        rows.append(embeddings[ids].mean(dim=0))  # multi-token label: mean of its sub-tokens
    return torch.stack(rows + sample_frequent(embeddings, ctx, n_tokens - len(rows)))


@register_method("prompt_tuning")
class PromptTuningMethod(PeftMethod):
    config_cls = PromptTuningConfig
    description = "soft prompt prepended to the input embeddings (peft PromptTuning), frozen model"

    def peft_config(self, model, ctx: ModelContext):
        c = self.config
        kw = {}
        if c.init == "text":
            # peft loads the tokenizer by path for its TEXT init
            self._tok_dir = tempfile.TemporaryDirectory(prefix="pb-tok-")
            ctx.tokenizer.save_pretrained(self._tok_dir.name)
            kw = dict(prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=c.init_text,
                      tokenizer_name_or_path=self._tok_dir.name)
        elif c.init == "sample_vocab":
            kw = dict(prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)
        return PeftPromptTuningConfig(task_type=task_type(ctx), num_virtual_tokens=c.num_virtual_tokens, **kw)

    def init_adapter(self, model, ctx: ModelContext) -> None:
        weight = model.prompt_encoder[model.active_adapter].embedding.weight
        with torch.no_grad():
            if self.config.init == "random":
                weight.uniform_(-0.5, 0.5)
            elif self.config.init in ("class_label", "sample_frequent"):
                emb = model.get_base_model().get_input_embeddings().weight.detach()
                n = weight.shape[0]
                weight.copy_(class_label_init(emb, ctx, n) if self.config.init == "class_label"
                             else torch.stack(sample_frequent(emb, ctx, n)))

    def forward_mixed(self, model, input_ids, attention_mask, adapter_names):
        return prompt_bank_forward(model, input_ids, attention_mask, adapter_names)
