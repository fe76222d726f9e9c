"""What a task's answers are and when a prediction is right (light: imported by result readers).

A row's gold answer is its ``label``: a class index (``classify``), the list of right choice
indices (``choice``) or the list of accepted answer texts (``generate``).
"""

from __future__ import annotations

import re

# metrics that are the mean of per-example hits (``is_hit``): they get paired intervals and ranks
PER_EXAMPLE = ("accuracy", "exact_match")
# how a task is learned and scored; the row's gold answer is always its `label` column
OBJECTIVES = {
    "classify": "one fixed label set: `label` is a class index (label words scored, or an encoder's head)",
    "choice": "each example's own `choices`: `label` lists the right ones; scored by log-likelihood (causal LMs)",
    "generate": "`label` lists the acceptable answers; greedy generation, exact match after `normalise_answer`"
                " (causal LMs)",
}


def is_hit(gold, pred) -> bool:
    """Whether a prediction is right: ``gold`` is one answer, or a list of acceptable ones (a choice
    task's right choices, a generated answer's accepted texts)."""
    return pred in gold if isinstance(gold, (list, tuple)) else pred == gold


def normalise_answer(text: str) -> str:
    """What generated text and targets are compared as (exact match): the text up to its first
    newline, lower-cased, whitespace collapsed, a trailing full stop dropped."""
    first = text.strip().split("\n", 1)[0] if text.strip() else ""
    return re.sub(r"\s+", " ", first).strip().lower().rstrip(".").strip()
