"""How a model kind learns and predicts a classification task (method-agnostic).

- ``ClassificationObjective`` (encoders): the model returns (B, C) logits from its head.
- ``RankClassificationObjective`` (causal LMs): the input is the task template, the target is the
  label word; prediction scores every label word's log-likelihood after the input and takes the
  best (text-to-text rank classification, as in Lester et al.'s T5 setup).

  The same objective scores a choice task's own choices per example (``task.objective == "choice"``).
- ``GenerativeObjective`` (causal LMs, ``"generate"``): trains on the target
  text, predicts by greedy generation.

Each tokenises once per dataset (``encode``), pads per batch (``collate``), and returns a training
``loss``; at evaluation ``outputs`` (a tensor per batch, gathered across processes) becomes
predictions and scores through ``decode``. The model may prepend V virtual tokens: causal logits are read
from the last L positions, so every method is handled the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from peft_bench.interface.task import TaskSpec, normalise_answer


class ScoredObjective:
    """What every objective that scores classes or choices shares: the prediction is the best score."""

    def predict(self, model, batch) -> torch.Tensor:
        return self.scores(model, batch).argmax(-1)

    def outputs(self, model, batch) -> torch.Tensor:
        return self.scores(model, batch)

    def decode(self, outputs: torch.Tensor) -> tuple[list, list[list[float]]]:
        return decode_scores(outputs)

    def gold(self, label):
        """An example's gold answer as predictions are compared with it."""
        return label


class ClassificationObjective(ScoredObjective):
    def __init__(self, task: TaskSpec, tokenizer, max_length: int):
        self.task, self.tok, self.max_length = task, tokenizer, max_length

    def texts(self, rows: dict[str, list]) -> list[str]:
        return [" ".join(parts) for parts in zip(*(rows[f] for f in self.task.input_fields))]

    def encode(self, rows: dict[str, list]) -> dict[str, list]:
        fields = [rows[f] for f in self.task.input_fields]
        if len(fields) > 2:  # more than a pair: one text
            fields = [[" ".join(map(str, parts)) for parts in zip(*fields)]]
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


def decode_scores(scores: torch.Tensor) -> tuple[list[int], list[list[float]]]:
    """Predicted class / choice (the best score) and the scores (-inf: a choice the example lacks)."""
    return scores.argmax(-1).tolist(), scores.tolist()


class RankClassificationObjective(ScoredObjective):
    def __init__(self, task: TaskSpec, tokenizer, max_length: int):
        self.task, self.tok, self.max_length = task, tokenizer, max_length
        self.per_example = task.objective == "choice"  # each example's own choices, not label words
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
        if self.per_example:  # a choice is cut to half the length budget; the prompt gets the rest
            half = self.max_length // 2
            choice_ids = [[self.tok(self.task.target_prefix + c, add_special_tokens=False)["input_ids"][:half] or
                           [self.tok.eos_token_id] for c in cs] for cs in rows["choices"]]
            keeps = [self.max_length - max(map(len, cs)) for cs in choice_ids]
        else:
            choice_ids, keeps = None, [self.max_length - max(len(ids) for ids in self.label_ids)] * len(enc)
        # truncate from the left: the end of the template ("...\nAnswer:") must stay
        ids = [x[-keep:] for x, keep in zip(enc, keeps)]
        return {"input_ids": ids, "length": [len(x) for x in ids], **({"choice_ids": choice_ids} if choice_ids else {})}

    def _choices(self, f: dict) -> list[list[int]]:
        """An example's candidates, tokenised: its own choices, or the task's label words."""
        return f["choice_ids"] if self.per_example else self.label_ids

    @property
    def single_token_labels(self) -> bool:
        return not self.per_example and all(len(ids) == 1 for ids in self.label_ids)

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
        gold = [f["label"][0] if isinstance(f["label"], list) else f["label"] for f in feats]  # trained on the first
        n_choices = torch.tensor([len(self._choices(f)) for f in feats])
        if not training and self.single_token_labels:
            seqs = [f["input_ids"] for f in feats]
            return {"labels": torch.tensor(gold), "n_choices": n_choices, **self._pad(seqs, [[len(s) - 1] for s in seqs])}
        seqs, preds = [], []
        for f, g in zip(feats, gold):
            options = self._choices(f)
            for c in ([g] if training else range(len(options))):
                n = len(f["input_ids"])
                seqs.append(f["input_ids"] + options[c])
                preds.append(list(range(n - 1, n - 1 + len(options[c]))))  # token t is predicted at t-1
        return {"labels": torch.tensor(gold), "n_choices": n_choices, **self._pad(seqs, preds)}

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
        """(B, C) log-likelihood (summed over its tokens) of each label word, or each of the
        example's choices, after its prompt; -inf past an example's own number of choices."""
        counts = batch["n_choices"]
        n = counts.shape[0]
        if self.single_token_labels and batch["input_ids"].shape[0] == n:  # prompt-only rows
            logp, _, _ = self.next_token_logprobs(model, batch)
            label_ids = torch.tensor([ids[0] for ids in self.label_ids], device=logp.device)
            return logp[:, label_ids]
        sums, _ = self._target_sums(model, batch)
        out = torch.full((n, int(counts.max())), float("-inf"), device=sums.device)
        mask = torch.arange(out.shape[1], device=sums.device) < counts.to(sums.device).unsqueeze(1)
        out[mask] = sums
        return out


# -- generation ------------------------------------------------------------------------------------
# Training is the rank-classification loss on one sequence per example: the prompt, then the first
# accepted answer and the end-of-sequence token; only the answer's tokens (and the end) are scored.
# Evaluation generates greedily, at most ``task.max_new_tokens`` tokens per example, stopping a row
# at its end-of-sequence token or its first newline; the text is compared after
# ``interface.answers.normalise_answer`` (exact match, as peft's method comparison does on GSM8K).
#
# Decoding re-runs the model's own forward on the whole sequence for every new token (no key/value
# cache). That costs more than ``generate`` with a cache, but it is the one path every method
# already serves correctly: prompt and prefix methods add their virtual tokens inside that forward,
# and no method needs a generation path of its own.
class GenerativeObjective(RankClassificationObjective):
    def __init__(self, task: TaskSpec, tokenizer, max_length: int):
        super().__init__(task, tokenizer, max_length)
        self.max_new = task.max_new_tokens
        if self.max_new >= max_length:
            raise ValueError(f"task {task.name!r}: `max_new_tokens` ({self.max_new}) must be below the run's "
                             f"`max_length` ({max_length}), which also holds the prompt.")
        # the token that ends an answer: the tokenizer's end of sequence (else its separator)
        self.eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if self.eos is None:
            raise ValueError(f"task {task.name!r}: generation needs a tokenizer with an end-of-sequence token; "
                             f"{type(tokenizer).__name__} has none.")

    def encode(self, rows: dict[str, list]) -> dict[str, list]:
        prompts = self.texts({f: rows[f] for f in self.task.input_fields})
        enc = self.tok(prompts, add_special_tokens=True)["input_ids"]
        keep = self.max_length - self.max_new  # the prompt keeps its end; the answer gets max_new tokens
        ids = [x[-keep:] for x in enc]
        targets = [(self.tok(self.task.target_prefix + answers[0], add_special_tokens=False)["input_ids"]
                    + [self.eos])[:self.max_new] for answers in rows["label"]]
        return {"input_ids": ids, "length": [len(x) for x in ids], "target_ids": targets}

    def collate(self, feats: list[dict], training: bool = True) -> dict[str, torch.Tensor]:
        """Training: prompt + first answer + end (its tokens scored). Evaluation: the prompts."""
        seqs = [f["input_ids"] + (f["target_ids"] if training else []) for f in feats]
        preds = [list(range(len(f["input_ids"]) - 1, len(f["input_ids"]) - 1 + len(f["target_ids"]))) if training
                 else [len(f["input_ids"]) - 1] for f in feats]
        return {"lengths": torch.tensor([len(f["input_ids"]) for f in feats]), **self._pad(seqs, preds)}

    def generate(self, model, batch) -> list[list[int]]:
        """Greedy continuation of every row's prompt: its new tokens, the stop token excluded."""
        device = batch["input_ids"].device
        seqs = [row[:n].tolist() for row, n in zip(batch["input_ids"], batch["lengths"])]
        new: list[list[int]] = [[] for _ in seqs]
        active = list(range(len(seqs)))
        for _ in range(self.max_new):
            if not active:
                break
            sub = {k: v.to(device) for k, v in self._pad([seqs[i] for i in active],
                                                         [[len(seqs[i]) - 1] for i in active]).items()}
            logp, rows, _ = self.next_token_logprobs(model, sub)
            best = logp.argmax(-1)[torch.argsort(rows)].tolist()  # one scored position per row, in row order
            still = []
            for i, t in zip(active, best):
                if t == self.eos or "\n" in self.tok.decode([t]):
                    continue
                new[i].append(t)
                seqs[i].append(t)
                still.append(i)
            active = still
        return new

    def outputs(self, model, batch) -> torch.Tensor:
        """(B, max_new_tokens) generated ids, -1 after each row's end (a tensor, to gather)."""
        new = self.generate(model, batch)
        out = torch.full((len(new), self.max_new), -1, dtype=torch.long, device=batch["input_ids"].device)
        for i, ids in enumerate(new):
            out[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def gold(self, label: list[str]) -> list[str]:
        return [normalise_answer(a) for a in label]

    def decode(self, outputs: torch.Tensor) -> tuple[list[str], list[list[float]]]:
        texts = [self.tok.decode([t for t in row if t >= 0], skip_special_tokens=True) for row in outputs.tolist()]
        return [normalise_answer(t) for t in texts], [[] for _ in texts]


def objective_for(kind: str, task: TaskSpec, tokenizer, max_length: int):
    """How a model of ``kind`` learns ``task``; a choice or generation task on an encoder is refused
    (its head has one fixed set of classes)."""
    if kind != "causal" and task.objective != "classify":
        raise ValueError(refusal(kind, task))
    if task.objective == "generate":
        return GenerativeObjective(task, tokenizer, max_length)
    return (RankClassificationObjective if kind == "causal" else ClassificationObjective)(task, tokenizer, max_length)


def refusal(kind: str, task: TaskSpec) -> str | None:
    """Why a model of ``kind`` cannot take ``task`` (None when it can)."""
    if kind == "causal" or task.objective == "classify":
        return None
    return (f"task {task.name!r} has objective {task.objective!r} ({'per-example choices' if task.objective == 'choice' else 'generated answers'}), "
            f"which needs a causal LM; an encoder's classification head has one fixed label set")
