"""Choice and generation tasks: each example's own choices scored by log-likelihood (checked against
an independent computation), greedy generation (checked against transformers' ``generate``), and
both trained and reported from a suite file; encoders and bad rows refused before any run."""

from __future__ import annotations

import json
import random

import pytest
import torch

from peft_bench.cli import main
from peft_bench.core.config import TrainConfig
from peft_bench.core.spec import RunSpec
from peft_bench.core.suite import SuiteError, load_suite
from peft_bench.engine.prepare import prepare
from peft_bench.interface.task import TaskDataError, is_hit, load_splits, normalise_answer
from peft_bench.interface.task_table import task_for
from peft_bench.results.store import read_records
from tests.test_suites import write

COLOURS = ["red", "green", "blue", "yellow", "black", "white"]


def choice_rows(n: int = 240) -> list[dict]:
    """Questions with two to four choices each; the answer given as a text (one row in five lists two)."""
    r = random.Random(0)
    rows = []
    for i in range(n):
        c = r.sample(COLOURS, r.choice([2, 3, 4]))
        gold = r.randrange(len(c))
        answer = [c[gold], c[(gold + 1) % len(c)]] if i % 5 == 0 else c[gold]
        rows.append({"question": f"item {i}: which is {c[gold]}?", "options": c, "answer": answer})
    return rows


def sum_rows(n: int = 240) -> list[dict]:
    r = random.Random(1)
    out = []
    for i in range(n):
        a, b = r.randrange(60), r.randrange(60)
        out.append({"q": f"{a} plus {b} =", "a": [str(a + b), f"{a + b}.0"] if i % 2 else str(a + b)})
    return out


def jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


CHOICE = {"source": None, "objective": "choice", "input_fields": ["question"], "columns": {"choices": "options"},
          "label_column": "answer", "template": "Q: {question}\nA:", "test_size": 60}
GENERATE = {"source": None, "objective": "generate", "input_fields": ["q"], "label_column": "a", "template": "{q}",
            "max_new_tokens": 6, "test_size": 60}


def spec_for(task_def: dict, method: str = "lora", method_config: dict | None = None, **train) -> RunSpec:
    cfg = dict(steps=4, batch_size=8, n_train=64, n_test=24, n_validation=16, eval_batch_size=8, max_length=64,
               num_threads=2, eval_points=1)
    cfg.update(train)
    return RunSpec(model="tiny-llama", task="t", method=method, method_config=method_config or {},
                   train=TrainConfig(**cfg), task_def=task_def).resolve()


def test_choice_rows_keep_their_own_choices_and_every_right_answer(tmp_path):
    task = task_for("t", {**CHOICE, "source": jsonl(tmp_path / "c.jsonl", choice_rows())})
    splits = load_splits(task)
    row = splits["test"][0]
    assert set(row) == {"question", "choices", "label"} and 2 <= len(row["choices"]) <= 4
    both = [r for part in splits.values() for r in part if len(r["label"]) == 2]
    assert both and all(r["label"] == sorted(r["label"]) for r in both)
    assert is_hit([0, 2], 2) and not is_hit([0, 2], 1) and is_hit(1, 1)


def test_choice_scores_equal_an_independent_log_likelihood(tmp_path):
    """Each score is log p(choice tokens | prompt) summed over the choice's tokens, computed here one
    unpadded sequence at a time; examples with fewer choices get -inf past their own."""
    spec = spec_for({**CHOICE, "source": jsonl(tmp_path / "c.jsonl", choice_rows())})
    run = prepare(spec)
    model = run.model.eval()
    feats = [run.test_dl.dataset[i] for i in range(8)]
    counts = [len(f["choice_ids"]) for f in feats]
    assert len(set(counts)) > 1  # different numbers of choices in one batch
    batch = run.objective.collate(feats, training=False)
    tok = run.ctx.tokenizer
    with torch.inference_mode():
        scores = run.objective.scores(model, batch)
        assert scores.shape == (8, max(counts))
        for i, f in enumerate(feats):
            row = run.test_examples[i]
            assert row["id"] == f["id"]
            for c in range(scores.shape[1]):
                if c >= counts[i]:
                    assert scores[i, c] == float("-inf")
                    continue
                target = f["choice_ids"][c]
                ids = torch.tensor([f["input_ids"] + target])
                logp = model(input_ids=ids).logits[0, -ids.shape[1]:].float().log_softmax(-1)
                n = len(f["input_ids"])
                want = sum(logp[n - 1 + k, t].item() for k, t in enumerate(target))
                assert abs(scores[i, c].item() - want) < 1e-4, (i, c, scores[i, c].item(), want)
        choices_text = [tok.decode(ids) for ids in feats[0]["choice_ids"]]
    assert [t.strip() for t in choices_text] == [c for c in choices_text_of(run, feats[0])]


def choices_text_of(run, feat) -> list[str]:
    splits = load_splits(run.task)
    from peft_bench.interface.task import example_id

    [row] = [r for r in splits["test"] if example_id(run.task, r) == feat["id"]]
    return row["choices"]


def test_greedy_generation_equals_transformers_generate(tmp_path):
    """The harness's cache-free greedy decoding gives the tokens of ``model.generate`` (greedy, with
    its cache), row by row, in a padded batch of prompts of different lengths."""
    spec = spec_for({**GENERATE, "source": jsonl(tmp_path / "g.jsonl", sum_rows()), "max_new_tokens": 8},
                    method="zero_shot")
    run = prepare(spec)
    obj, model, tok = run.objective, run.model.eval(), run.ctx.tokenizer
    ds = run.test_dl.dataset  # sorted longest first: take rows from both ends
    feats = [ds[i] for i in (0, 1, len(ds) // 2, len(ds) - 2, len(ds) - 1, 2)]
    assert len({len(f["input_ids"]) for f in feats}) > 1
    batch = obj.collate(feats, training=False)
    with torch.inference_mode():
        ours = obj.generate(model, batch)
        for f, got in zip(feats, ours):
            ids = torch.tensor([f["input_ids"]])
            ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                 eos_token_id=obj.eos, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
            cut = []
            for t in ref:  # the harness stops a row at its end token or first newline
                if t == obj.eos or "\n" in tok.decode([t]):
                    break
                cut.append(t)
            assert got == cut
    assert any(ours)  # something was generated
    pred, scores = obj.decode(obj.outputs(model, batch))
    assert pred == [normalise_answer(tok.decode(g)) for g in ours] and scores == [[]] * 6


def test_normalise_answer():
    assert normalise_answer("  The Answer.\nmore text") == "the answer"
    assert normalise_answer("42 ") == "42" and normalise_answer("") == ""


COLOURS_TABLE = """
[task.colours]
source = "data/c.jsonl"
objective = "choice"
input_fields = ["question"]
columns = {choices = "options"}
label_column = "answer"
template = "Q: {question}\\nA:"
test_size = 60
"""


def test_choice_and_generation_tasks_train_and_report_from_a_suite(tmp_path):
    jsonl(tmp_path / "data" / "c.jsonl", choice_rows())
    jsonl(tmp_path / "data" / "g.jsonl", sum_rows())
    suite = write(tmp_path, """
models = ["tiny-llama"]
tasks = ["colours", "sums"]
methods = ["zero_shot", "lora"]
[train]
steps = 30
batch_size = 8
n_train = 64
n_test = 24
COLOURS_TABLE
[task.sums]
source = "data/g.jsonl"
objective = "generate"
input_fields = ["q"]
label_column = "a"
template = "{q}"
max_new_tokens = 6
test_size = 60
""".replace("COLOURS_TABLE", COLOURS_TABLE))
    out = tmp_path / "out"
    assert main(["run", suite, "--out", str(out)]) == 0
    recs = read_records(out / "s" / "results.jsonl")
    assert all(r.status == "ok" for r in recs), [r.error for r in recs]
    by = {(r.run.task, r.run.method): r for r in recs}
    assert set(by[("sums", "lora")].metrics) == {"exact_match"} and set(by[("colours", "lora")].metrics) == {"accuracy"}
    lora = by[("colours", "lora")]
    assert lora.resources.final_loss < lora.resources.first_loss  # the choice loss trains
    report = (out / "s" / "README.md").read_text()
    assert "Each example's own choices, scored by log-likelihood" in report
    assert "exact_match ↑ [95% CI]" in report and "Answers generated greedily (at most 6 new tokens)" in report


def test_choice_tasks_are_refused_on_encoders_before_running(tmp_path):
    jsonl(tmp_path / "data" / "c.jsonl", choice_rows())
    suite = write(tmp_path, """
models = ["tiny-bert"]
tasks = ["colours"]
methods = ["lora"]
""" + COLOURS_TABLE)
    with pytest.raises(SuiteError, match=r"task 'colours' has objective 'choice' \(per-example choices\), which needs "
                                         r"a causal LM.*model 'tiny-bert' is of kind encoder"):
        load_suite(suite)


@pytest.mark.parametrize("bad,message", [
    ({"question": "q", "options": ["a", "b"], "answer": "c"},
     r"row \d+: label 'c' is neither an index 0..1 nor one of the choices \['a', 'b'\]"),
    ({"question": "q", "options": ["a"], "answer": 0}, r"`choices` must be a list of at least two texts, got \['a'\]"),
])
def test_bad_choice_rows_are_refused_before_training(tmp_path, bad, message):
    rows = choice_rows(80)
    rows[7] = {**bad, "answer": bad["answer"]}
    task = task_for("t", {**CHOICE, "source": jsonl(tmp_path / "c.jsonl", rows), "test_size": 20})
    with pytest.raises(TaskDataError, match=message):
        load_splits(task)


def test_a_generation_row_without_an_answer_is_refused(tmp_path):
    rows = sum_rows(80)
    rows[3]["a"] = "  "
    task = task_for("t", {**GENERATE, "source": jsonl(tmp_path / "g.jsonl", rows), "test_size": 20})
    with pytest.raises(TaskDataError, match=r"row \d+: no answer text in `label`"):
        load_splits(task)


def test_exact_match_of_a_planted_answer(tmp_path):
    """Every row's answer is the same word: full fine-tuning plants it, and greedy generation then
    gives it for every test row (exact match 1.0), where the untrained model gives it for none."""
    rows = [{"q": f"{i} plus {i} =", "a": "ok"} for i in range(240)]
    task_def = {**GENERATE, "source": jsonl(tmp_path / "g.jsonl", rows), "max_new_tokens": 4}
    from peft_bench.engine.loop import evaluate, train

    scores = {}
    for method, cfg in (("zero_shot", {}), ("full_finetune", {"lr": 1e-2})):
        run = prepare(spec_for(task_def, method=method, method_config=cfg, steps=40))
        if run.method.trains:
            train(run)
        metrics, pred, _, _ = evaluate(run)
        scores[method] = (metrics["exact_match"]["value"], pred.pred[:3], pred.gold[:3])
    assert scores["zero_shot"][0] == 0.0
    assert scores["full_finetune"][0] == 1.0, scores
    assert scores["full_finetune"][2] == [["ok"]] * 3
