"""A synthetic, quickly learnable task for end-to-end tests: does the text contain "great"?"""

from __future__ import annotations

import random
from pathlib import Path

import datasets

from peft_bench import TASKS, TaskSpec

_WORDS = "the a film plot actor scene story music long short slow fast very quite".split()


def make_dummy(_: Path, n: int = 1200) -> datasets.Dataset:
    rng = random.Random(7)
    rows = []
    for i in range(n):
        words = rng.choices(_WORDS, k=rng.randint(3, 8))
        label = i % 2
        words.insert(rng.randint(0, len(words)), "great" if label else "awful")
        rows.append({"text": f"{' '.join(words)} #{i}", "label": label})
    return datasets.Dataset.from_list(rows)


SPEC = TASKS.add("dummy", TaskSpec(
    name="dummy",
    description="synthetic: 'great' vs 'awful' among filler words (tests only)",
    input_fields=("text",),
    template="Text: {text}\nLabel:",
    label_words=("bad", "good"),
    reader=make_dummy,
    test_size=200,
    validation_size=100,
))
