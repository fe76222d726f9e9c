"""How a model kind learns and predicts a classification task (method-agnostic).

- ``ClassificationObjective`` (encoders): the model returns (B, C) logits from its head.
- ``RankClassificationObjective`` (causal LMs): the input is the task template, the target is the
  label word; prediction scores every label word's log-likelihood after the input and takes the
  best (text-to-text rank classification, as in Lester et al.'s T5 setup).

Both tokenise once per dataset (``encode``), pad per batch (``collate``), and return a training
``loss`` and class ``predict``ions. The model may prepend V virtual tokens: causal logits are read
from the last L positions, so every method is handled the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.task import TaskSpec


class ClassificationObjective:
    def __init__(self, task: TaskSpec, tokenizer, max_length: int):
        self.task, self.tok, self.max_length = task, tokenizer, max_length

    def texts(self, rows: dict[str, list]) -> list[str]:
        return [" ".join(parts) for parts in zip(*(rows[f] for f in self.task.input_fields))]

    def encode(self, rows: dict[str, list]) -> dict[str, list]:
        fields = [rows[f] for f in self.task.input_fields]
        # a text pair keeps the first field (the question) whole and truncates the second
        trunc = "only_second" if len(fields) == 2 else True
        enc = self.tok(*fields[:2], truncation=trunc, max_length=self.max_length)
        return {"input_ids": enc["input_ids"], "length": [len(x) for x in enc["input_ids"]]}

    def collate(self, feats: list[dict], training: bool = True) -> dict[str, torch.Tensor]:
        batch = self.tok.pad([{"input_ids": f["input_ids"]} for f in feats], return_tensors="pt")
        batch["labels"] = torch.tensor([f["label"] for f in feats])
        return dict(batch)

    def logits(self, model, batch) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def loss(self, model, batch) -> torch.Tensor:
        return F.cross_entropy(self.logits(model, batch).float(), batch["labels"])

    def predict(self, model, batch) -> torch.Tensor:
        return self.logits(model, batch).argmax(-1)


class RankClassificationObjective:
    def __init__(self, task: TaskSpec, tokenizer, max_length: int):
        self.task, self.tok, self.max_length = task, tokenizer, max_length
        self.label_ids = [tokenizer(task.target_prefix + w, add_special_tokens=False)["input_ids"]
                          for w in task.label_words]
        if any(len(ids) == 0 for ids in self.label_ids):
            raise ValueError(f"task {task.name!r}: a label word tokenises to nothing: {task.label_words}.")

    def texts(self, rows: dict[str, list]) -> list[str]:
        return [self.task.prompt(dict(zip(rows, vals))) for vals in zip(*rows.values())]

    def encode(self, rows: dict[str, list]) -> dict[str, list]:
        prompts = self.texts({f: rows[f] for f in self.task.input_fields})
        enc = self.tok(prompts, add_special_tokens=True)["input_ids"]
        keep = self.max_length - max(len(ids) for ids in self.label_ids)
        # truncate from the left: the end of the template ("...\nAnswer:") must stay
        ids = [x[-keep:] for x in enc]
        return {"input_ids": ids, "length": [len(x) for x in ids]}

    def _sequences(self, feats: list[dict], classes: list[list[int]]) -> dict[str, torch.Tensor]:
        """One row per (example, candidate label): prompt + label tokens, right-padded."""
        seqs, targets = [], []
        for f, cands in zip(feats, classes):
            for c in cands:
                seqs.append(f["input_ids"] + self.label_ids[c])
                targets.append([0] * len(f["input_ids"]) + [1] * len(self.label_ids[c]))
        width = max(map(len, seqs))
        pad = self.tok.pad_token_id
        return {
            "input_ids": torch.tensor([s + [pad] * (width - len(s)) for s in seqs]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]),
            "target_mask": torch.tensor([t + [0] * (width - len(t)) for t in targets], dtype=torch.bool),
        }

    def collate(self, feats: list[dict], training: bool = True) -> dict[str, torch.Tensor]:
        """Training: prompt + gold label. Evaluation: prompt + each candidate label (B*C rows)."""
        classes = [[f["label"]] for f in feats] if training else [list(range(self.task.num_labels))] * len(feats)
        return {"labels": torch.tensor([f["label"] for f in feats]), **self._sequences(feats, classes)}

    @staticmethod
    def target_logprobs(model, input_ids, attention_mask, target_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row sum of log p(target token | prefix), and the number of target tokens."""
        L = input_ids.shape[1]
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -L:]
        # token t is predicted at position t-1; only target positions go through log_softmax
        pos = target_mask[:, 1:]
        picked = logits[:, :-1][pos].float().log_softmax(-1)
        lp = picked.gather(-1, input_ids[:, 1:][pos].unsqueeze(-1)).squeeze(-1)
        row = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1).expand_as(pos)[pos]
        sums = torch.zeros(input_ids.shape[0], device=lp.device, dtype=lp.dtype).index_add(0, row, lp)
        return sums, pos.sum(1)

    def loss(self, model, batch) -> torch.Tensor:
        sums, counts = self.target_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["target_mask"])
        return -(sums.sum() / counts.sum())

    def predict(self, model, batch) -> torch.Tensor:
        sums, _ = self.target_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["target_mask"])
        return sums.view(batch["labels"].shape[0], self.task.num_labels).argmax(-1)


def objective_for(kind: str, task: TaskSpec, tokenizer, max_length: int):
    return (RankClassificationObjective if kind == "causal" else ClassificationObjective)(task, tokenizer, max_length)
