"""How a model kind learns and predicts a classification task (method-agnostic).

- ``ClassificationObjective`` (encoders): the model returns (B, C) logits from its head.
- ``RankClassificationObjective`` (causal LMs): the input is the task template, the target is the
  label word; prediction scores every label word's log-likelihood after the input and takes the
  best (text-to-text rank classification, as in Lester et al.'s T5 setup).

Both tokenise once per dataset (``encode``), pad per batch (``collate``), and return a training
``loss``, per-class ``scores`` (B, C) and class ``predict``ions (their argmax). The model may prepend V virtual tokens: causal logits are read
from the last L positions, so every method is handled the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from peft_bench.interface.task import TaskSpec


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

    def scores(self, model, batch) -> torch.Tensor:
        """(B, C) class scores: the head's logits."""
        return self.logits(model, batch).float()

    def predict(self, model, batch) -> torch.Tensor:
        return self.scores(model, batch).argmax(-1)


class RankClassificationObjective:
    def __init__(self, task: TaskSpec, tokenizer, max_length: int):
        self.task, self.tok, self.max_length = task, tokenizer, max_length
        self.label_ids = [tokenizer(task.target_prefix + w, add_special_tokens=False)["input_ids"]
                          for w in task.label_words]
        if any(len(ids) == 0 for ids in self.label_ids):
            raise ValueError(f"task {task.name!r}: a label word tokenises to nothing: {task.label_words}.")
        self._keep_ok: bool | None = None  # does the model accept `logits_to_keep`? (learned once)

    def texts(self, rows: dict[str, list]) -> list[str]:
        return [self.task.prompt(dict(zip(rows, vals))) for vals in zip(*rows.values())]

    def encode(self, rows: dict[str, list]) -> dict[str, list]:
        prompts = self.texts({f: rows[f] for f in self.task.input_fields})
        enc = self.tok(prompts, add_special_tokens=True)["input_ids"]
        keep = self.max_length - max(len(ids) for ids in self.label_ids)
        # truncate from the left: the end of the template ("...\nAnswer:") must stay
        ids = [x[-keep:] for x in enc]
        return {"input_ids": ids, "length": [len(x) for x in ids]}

    @property
    def single_token_labels(self) -> bool:
        return all(len(ids) == 1 for ids in self.label_ids)

    def _pad(self, seqs: list[list[int]], preds: list[list[int]]) -> dict[str, torch.Tensor]:
        """Right-pad; ``pred_mask`` marks the positions whose next-token distribution is scored."""
        width = max(map(len, seqs))
        pad = self.tok.pad_token_id
        pred_mask = torch.zeros(len(seqs), width, dtype=torch.bool)
        for i, ps in enumerate(preds):
            pred_mask[i, ps] = True
        return {
            "input_ids": torch.tensor([s + [pad] * (width - len(s)) for s in seqs]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]),
            "pred_mask": pred_mask,
        }

    def collate(self, feats: list[dict], training: bool = True) -> dict[str, torch.Tensor]:
        """Training: prompt + gold label tokens. Evaluation: prompt + each candidate label (B*C rows),
        or, when every label word is one token, the prompt alone (B rows: all candidates are scored
        from the same next-token distribution, which gives the same numbers at 1/C of the cost)."""
        labels = torch.tensor([f["label"] for f in feats])
        if not training and self.single_token_labels:
            seqs = [f["input_ids"] for f in feats]
            return {"labels": labels, **self._pad(seqs, [[len(s) - 1] for s in seqs])}
        classes = [[f["label"]] for f in feats] if training else [list(range(self.task.num_labels))] * len(feats)
        seqs, preds = [], []
        for f, cands in zip(feats, classes):
            for c in cands:
                n = len(f["input_ids"])
                seqs.append(f["input_ids"] + self.label_ids[c])
                preds.append(list(range(n - 1, n - 1 + len(self.label_ids[c]))))  # token t is predicted at t-1
        return {"labels": labels, **self._pad(seqs, preds)}

    def next_token_logprobs(self, model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log p(next token) at every ``pred_mask`` position: (N, vocab), with their rows and columns.

        The LM head runs only at the needed positions (``logits_to_keep``, counted from the end so
        that virtual tokens prepended by prompt methods do not shift them); models without that
        argument compute all logits and are sliced afterwards.
        """
        input_ids, pred_mask = batch["input_ids"], batch["pred_mask"]
        L = input_ids.shape[1]
        rows, cols = pred_mask.nonzero(as_tuple=True)
        keep = torch.unique(cols)
        kw = {"logits_to_keep": keep - L} if self._keep_ok is not False else {}
        try:
            logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"], **kw).logits
        except TypeError as e:
            if not kw or "logits_to_keep" not in str(e):
                raise
            self._keep_ok = False
            return self.next_token_logprobs(model, batch)
        if kw:
            self._keep_ok = True
            picked = logits[:, -len(keep):][rows, torch.searchsorted(keep, cols)]
        else:
            picked = logits[:, -L:][rows, cols]
        return picked.float().log_softmax(-1), rows, cols

    def _target_sums(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row sum of log p(label tokens | prompt), and the number of label tokens."""
        logp, rows, cols = self.next_token_logprobs(model, batch)
        targets = batch["input_ids"][rows, cols + 1]
        lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        n = batch["input_ids"].shape[0]
        return torch.zeros(n, device=lp.device).index_add(0, rows, lp), batch["pred_mask"].sum(1)

    def loss(self, model, batch) -> torch.Tensor:
        sums, counts = self._target_sums(model, batch)
        return -(sums.sum() / counts.sum())

    def scores(self, model, batch) -> torch.Tensor:
        """(B, C) log-likelihood of each label word after each example's prompt."""
        n, c = batch["labels"].shape[0], self.task.num_labels
        if batch["input_ids"].shape[0] == n and c > 1:  # prompt-only rows: single-token labels
            logp, _, _ = self.next_token_logprobs(model, batch)
            label_ids = torch.tensor([ids[0] for ids in self.label_ids], device=logp.device)
            return logp[:, label_ids]
        sums, _ = self._target_sums(model, batch)
        return sums.view(n, c)

    def predict(self, model, batch) -> torch.Tensor:
        return self.scores(model, batch).argmax(-1)


def objective_for(kind: str, task: TaskSpec, tokenizer, max_length: int):
    return (RankClassificationObjective if kind == "causal" else ClassificationObjective)(task, tokenizer, max_length)
