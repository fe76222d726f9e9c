"""Per-example predictions, validation during training, learning curves, "did not train", and
hyperparameters chosen on validation with an equal budget: real runs of tiny models."""

from __future__ import annotations

import pytest

from conftest import tiny_spec
from peft_bench.engine.record import execute, loss_curve
from peft_bench.results.aggregate import summarize, training_problem
from peft_bench.results.predictions import read_predictions
from peft_bench.results.store import append_record, load_records


def _run(tmp_path, method="full_finetune", **kw):
    store = tmp_path / "store"
    rec = execute(tiny_spec(method, **kw), store)
    assert rec.status == "ok", rec.error
    append_record(store / "results.jsonl", rec)
    return next(r for r in load_records(store) if r.run_id == rec.run_id)


def test_predictions_are_written_beside_the_store_and_match_the_metrics(tmp_path):
    from peft_bench.core.registry import TASKS
    from peft_bench.interface.task import example_id, load_splits

    r = _run(tmp_path, method_config={"lr": 1e-3}, eval_points=2)
    assert r.run.predictions == f"predictions/{r.run_id}.json.gz"
    assert (tmp_path / "store" / r.run.predictions).is_file()
    test = read_predictions(r, "test")
    assert len(test["ids"]) == len(set(test["ids"])) == r.run.n_test == 64
    # the ids are the stable ids of the task's first 64 test rows, whatever order they were scored in
    task = TASKS.get("dummy")
    rows = load_splits(task)["test"].select(range(64))
    assert set(test["ids"]) == {example_id(task, row) for row in rows}
    assert [max(range(2), key=lambda c: s[c]) for s in test["scores"]] == test["pred"]
    hits = sum(int(g == p) for g, p in zip(test["gold"], test["pred"]))
    assert hits / 64 == pytest.approx(r.metric("accuracy"))
    val = read_predictions(r, "validation")
    assert len(val["ids"]) == r.run.n_validation == 64 and not set(val["ids"]) & set(test["ids"])
    assert sum(int(g == p) for g, p in zip(val["gold"], val["pred"])) / 64 == pytest.approx(r.validation["accuracy"].value)


def test_validation_changes_nothing_in_training(tmp_path):
    """Evaluating on validation during training (model.eval, no generator drawn from) leaves the
    trained weights, losses and test predictions exactly as without it."""
    a = _run(tmp_path / "a", method_config={"lr": 1e-3}, eval_points=0)
    b = _run(tmp_path / "b", method_config={"lr": 1e-3}, eval_points=4)
    assert read_predictions(a)["scores"] == read_predictions(b)["scores"]
    assert a.curves.train_loss == b.curves.train_loss
    assert not a.validation and a.curves.validation == []
    assert [p["step"] for p in b.curves.validation] == [10, 20, 30, 40]
    assert b.resources.val_time_s > 0 and a.resources.val_time_s == 0


def test_loss_curve_is_bounded_and_averages_every_step():
    losses = [float(i) for i in range(1, 501)]
    curve = loss_curve(losses)
    assert len(curve) == 50 and curve[0] == [10, 5.5] and curve[-1] == [500, 495.5]
    assert loss_curve([1.0, 2.0, 3.0]) == [[1, 1.0], [2, 2.0], [3, 3.0]]


def test_a_planted_non_learning_run_is_flagged_in_the_table(tmp_path):
    from peft_bench.results.report import make_table

    # learning rates of 1e-12: nothing moves, the loss cannot fall
    frozen = _run(tmp_path, method="lora", method_config={"lr": 1e-12}, head_lr=1e-12, steps=30, eval_points=2)
    learned = _run(tmp_path, method_config={"lr": 1e-3}, steps=40, eval_points=2)
    assert training_problem(frozen).startswith("loss did not fall")
    assert training_problem(learned) is None, (learned.resources.first_loss, learned.resources.final_loss,
                                               learned.curves.validation, learned.baselines.majority_val_accuracy)
    table = make_table([frozen, learned], "dummy")
    assert "| lora (head_lr=1e-12, steps=30) — **did not train** |" in table, table
    assert "| full_finetune (head_lr=0.002, steps=40) " in table and table.count("did not train") == 1


def test_search_chooses_on_validation_with_an_equal_budget(tmp_path):
    from peft_bench.core.suite import SuiteError, load_suite

    base = """
name = "s"
models = ["tiny-bert"]
tasks = ["dummy"]
methods = ["lora", "prompt_tuning", "zero_shot"]
[train]
steps = 4
batch_size = 8
n_train = 32
n_test = 16
n_validation = 16
eval_points = 1
"""
    good = tmp_path / "good.toml"
    good.write_text(base + "[search.lora]\nlr = [1e-3, 1e-2]\n[search.prompt_tuning]\nlr = [0.03, 0.3]\n")
    suite = load_suite(str(good))
    trials = [s for s in suite.runs if s.search]
    assert len(trials) == 4 and len(suite.runs) == 5  # zero_shot trains nothing: one run, no search
    assert {s.method_config["lr"] for s in trials if s.method == "lora"} == {1e-3, 1e-2}
    assert trials[0].search == {"space": {"lr": [1e-3, 1e-2]}, "trial": {"lr": 1e-3}, "objective": "validation accuracy",
                                "seeds": [0]}
    unequal = tmp_path / "unequal.toml"
    unequal.write_text(base + "[search.lora]\nlr = [1e-3, 1e-2, 3e-2]\n[search.prompt_tuning]\nlr = [0.03, 0.3]\n")
    with pytest.raises(SuiteError, match=r"same number of trials .* got lora 3, prompt_tuning 2"):
        load_suite(str(unequal))
    bad = tmp_path / "bad.toml"
    bad.write_text(base.replace("eval_points = 1", "eval_points = 0")
                   + "[search.lora]\nlrr = [1e-3]\n[search.zero_shot]\nlr = [1e-3]\n")
    with pytest.raises(SuiteError) as e:
        load_suite(str(bad))
    text = str(e.value)
    assert "unknown config field 'lrr'. Did you mean 'lr'?" in text
    assert "method 'zero_shot' trains nothing" in text and "`train.eval_points` must be at least 1, got 0" in text


def test_selection_reads_validation_never_test(tmp_path):
    """Three trials of one variant: the chosen one has the best validation score, though another
    has the best test score; the summary keeps only it and lists every trial."""
    from test_report import rec

    space = {"lr": [1e-4, 1e-3, 1e-2]}
    records = []
    for lr, val, test in ((1e-4, 0.70, 0.95), (1e-3, 0.90, 0.60), (1e-2, 0.80, 0.70)):
        r = rec("lora", 0, test, 100, config={"lr": lr}, root=tmp_path, val=val)
        r.run.search = {"space": space, "trial": {"lr": lr}, "objective": "validation accuracy"}
        records.append(r)
    s = summarize(records)
    assert len(s) == 1 and s.iloc[0]["search"] == {"lr": 1e-3}
    assert s.iloc[0]["accuracy"] == pytest.approx(0.60)
    trials = s.iloc[0]["trials"]
    assert [t["values"]["lr"] for t in trials] == [1e-4, 1e-3, 1e-2]
    assert [t["chosen"] for t in trials] == [False, True, False]


def test_merge_carries_the_predictions(tmp_path):
    from peft_bench.results.store import merge_stores

    r = _run(tmp_path / "shard", method_config={"lr": 1e-3})
    merged, _ = merge_stores([tmp_path / "shard" / "store"], tmp_path / "all")
    assert (tmp_path / "all" / r.run.predictions).is_file()
    again = load_records(tmp_path / "all")[0]
    assert read_predictions(again) == read_predictions(r)


@pytest.mark.slow
def test_search_seeds_run_the_trials_on_one_seed_and_the_chosen_trial_on_the_others(tmp_path, capsys):
    from peft_bench import run_suite, summarize
    from peft_bench.cli import main
    from peft_bench.core.suite import load_suite

    path = tmp_path / "s.toml"
    path.write_text("""
name = "s"
models = ["tiny-bert"]
tasks = ["dummy"]
methods = ["lora", "full_finetune"]
seeds = [0, 1, 2]
search_seeds = [0]
[search.lora]
lr = [1e-4, 3e-3]
[search.full_finetune]
lr = [1e-6, 1e-3]
[train]
steps = 30
batch_size = 16
n_train = 300
n_test = 32
n_validation = 64
eval_points = 1
""")
    suite = load_suite(str(path))
    assert len(suite.runs) == 12 and len(suite.deferred) == 8  # 2 methods x 2 trials x seeds 1, 2
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert plan.count("after choice") == 8 and "0 skipped" in plan and "4 to run, then the chosen of 8" in plan
    records = run_suite(str(path), out=tmp_path / "out", isolate=False, switch=False)
    assert len(records) == 8  # 4 trials on seed 0, then the 2 chosen trials on seeds 1 and 2
    s = summarize(records)
    assert sorted(s["n"]) == [3, 3]
    for _, row in s.iterrows():
        trials = {t["values"]["lr"]: t for t in row["trials"]}
        chosen = next(lr for lr, t in trials.items() if t["chosen"])
        assert row["search"] == {"lr": chosen} and all(t["seeds"] == 1 for t in trials.values())
        # chosen on seed 0's validation score alone
        seed0 = {r.run.method_config["lr"]: r.validation["accuracy"].value for r in records
                 if r.run.method == row["method"] and r.run.train["seed"] == 0}
        assert seed0[chosen] == max(seed0.values())
    again = run_suite(str(path), out=tmp_path / "out", isolate=False, switch=False)
    assert len(again) == 8  # resumed: nothing left to run
    bad = tmp_path / "bad.toml"
    bad.write_text(path.read_text().replace("search_seeds = [0]", "search_seeds = [7]"))
    with pytest.raises(ValueError, match=r"`search_seeds` must be a non-empty list of seeds from `seeds`"):
        load_suite(str(bad))
