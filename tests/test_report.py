from __future__ import annotations

import dataclasses
import re

import pytest

import numpy as np

from peft_bench.results.aggregate import pareto_front, summarize
from peft_bench.studies.lester import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, check_claims
from peft_bench.results.predictions import write_predictions
from peft_bench.results.report import make_table, write_report
from peft_bench.results.store import ResultRecord, append_record, read_records

N_EXAMPLES = 1000


def planted(acc: float, seed: int, n: int = N_EXAMPLES, stream: int | None = None) -> np.ndarray:
    """0/1 correctness with exactly round(acc * n) correct examples. Variants of one ``stream``
    (default: all) are nested by seed: at each seed the better variant is right on every example
    the worse one is right on (strongly paired, as methods on one model are); another ``stream``
    is independent of them."""
    order = np.random.default_rng([seed] if stream is None else [seed, stream]).permutation(n)
    out = np.zeros(n, dtype=int)
    out[order[:round(acc * n)]] = 1
    return out


def rec(method, seed, acc, trainable, status="ok", config=None, stored=None, mem=3 * 2**20, task="t", model="m",
        step=0.25, root=None, stream=None, val=None, total=1_000_000):
    """A record; with ``root``, its planted per-example predictions (``planted``) are written into
    ``root`` (its store folder) and its validation accuracy is ``val`` (default: ``acc``)."""
    config = config or {}
    cid = "-".join(f"{k}{v}" for k, v in sorted(config.items()))
    run_id = f"{model}-{task}-{method}{cid}-{seed}"
    predictions = None
    if root is not None and status == "ok":
        c = planted(acc, seed, stream=stream)
        ids = [f"e{i}" for i in range(len(c))]
        predictions = write_predictions(root, run_id, ["no", "yes"], {"test": {
            "ids": ids, "gold": [1] * len(c), "pred": c.tolist(), "scores": [[0.0, float(x)] for x in c]}})
        acc = float(c.mean())
    r = ResultRecord(
        run={"run_id": run_id, "model": model, "task": task, "method": method,
             "method_config": config, "train": {"seed": seed}, "suite": "s", "predictions": predictions},
        status=status,
        validation={"accuracy": {"value": acc if val is None else val}} if status == "ok" else {},
        metrics={"accuracy": {"value": acc, "stderr": 0.01, "higher_is_better": True}} if status == "ok" else {},
        params={"trainable_params": trainable, "total_params": total, "trainable_head_params": 10,
                "stored_params": stored if stored is not None else trainable,
                "stored_bytes": 4 * (stored if stored is not None else trainable)},
        resources={"peak_mem_train_bytes": mem, "peak_mem_eval_bytes": 2**20, "train_time_s": 12.5,
                   "step_time_median_s": step, "peak_mem_kind": "cpu_rss_sampled", "tokens_per_s": 1234.4,
                   "mfu": 0.0123},
        baselines={"majority_accuracy": 0.6},
        curves={"train_loss": [[1, 0.7], [2, 0.5]], "validation": [{"step": 2, "accuracy": acc}]} if acc else {},
        env={"device": "cpu", "device_name": "test cpu", "torch_threads": 2, "cpu_count": 2, "python": "3.11",
             "packages": {"torch": "2"}, "git_commit": "abc"},
    )
    r.origin = root
    return r


GOLDEN = """\
Same in every row: model: m; rank: 1–2; of which head: 10; peak train mem: 3.0 MiB; peak eval mem: 1.0 MiB; train time: 12.5 s; step time: 0.250 s; tokens/s: 1,234; MFU: 1.2%.

| method                    | accuracy ↑ [95% CI]      | validation accuracy   | n   | trainable params ↓   | % of total   | stored ↓   |
|---------------------------|--------------------------|-----------------------|-----|----------------------|--------------|------------|
| lora                      | **0.800 [0.777, 0.824]** | 0.800                 | 1   | 2.00k                | 0.2%         | 7.8 KiB    |
| prompt_tuning             | **0.750 [0.683, 0.816]** | 0.750                 | 2   | **100**              | 0.01%        | **400 B**  |
| majority class (baseline) | 0.600                    | —                     | —   | —                    | —            | —          |"""


def test_make_table_golden(tmp_path):
    """Seeds pool into the mean with a 95% CI over examples and seeds (the two prompt-tuning seeds
    differ by .1: a wide interval), failures are left out, and .05 between a one-seed and a
    two-seed variant is no significant difference: both rank 1-2, both bold. The smallest exact
    count is bold; time and memory are not ranked; the baseline is the last row; columns with one
    value in every row are stated once above the table."""
    records = [rec("prompt_tuning", 0, 0.7, 100, root=tmp_path), rec("prompt_tuning", 1, 0.8, 100, root=tmp_path),
               rec("lora", 0, 0.8, 2000, root=tmp_path), rec("lora", 1, None, 2000, status="failed", root=tmp_path)]
    assert make_table(records, "t") == GOLDEN
    # without per-example predictions there is no interval and no rank: nothing is bold
    bare = make_table([rec("prompt_tuning", 0, 0.7, 100), rec("lora", 0, 0.8, 2000)], "t")
    assert "| 0.800 " in bare and "**0." not in bare


def test_records_round_trip_and_torn_line_is_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    a, b = rec("lora", 0, 0.8, 2000), rec("prompt_tuning", 0, 0.7, 100)
    append_record(path, a)
    append_record(path, b)
    with open(path, "a") as f:
        f.write('{"run": {"run_id": "half"')  # a crash in the middle of a write
    got = {r.run_id: r for r in read_records(path)}
    assert set(got) == {a.run_id, b.run_id}
    assert got[a.run_id].metrics == a.metrics


def test_pareto_front_membership():
    cost = [1, 2, 3, 4, 4, float("nan")]
    value = [0.5, 0.7, 0.6, 0.9, 0.8, 1.0]
    # (3, .6) is dominated by (2, .7); (4, .8) by (4, .9); NaN cost is never on the front
    assert pareto_front(cost, value) == [True, True, False, True, False, False]
    assert pareto_front([1, 1], [0.5, 0.5]) == [True, True]  # equal points do not dominate each other


def pt(init="class_label", n=20):
    return {"init": init, "num_virtual_tokens": n, "lr": 0.03}


def lester_records(acc: dict[tuple, tuple[float, float]], root, streams: dict | None = None,
                   total: int = 134_515_008, model: str = "m") -> list[ResultRecord]:
    """Two seeds per variant with the given accuracies on 1,000 planted test examples (nested, see
    ``planted``, unless ``streams`` gives a variant its own); parameters like SmolLM2-135M's."""
    out = []
    for key, (a0, a1) in acc.items():
        method, init, n = key
        cfg = pt(init, n) if method == "prompt_tuning" else {"lr": 1e-3}
        trainable = {"prompt_tuning": 576 * (n or 0), "lora": 460_800, "full_finetune": total}[method]
        out += [rec(method, s, a, trainable, config=cfg, mem=(2 if method == "full_finetune" else 1) * 2**30,
                    root=root, stream=(streams or {}).get(key), model=model, total=total)
                for s, a in enumerate((a0, a1))]
    return out


LESTER = {
    ("prompt_tuning", "class_label", 20): (0.80, 0.82),
    ("prompt_tuning", "sample_frequent", 20): (0.74, 0.76),
    ("prompt_tuning", "random", 20): (0.60, 0.62),
    ("prompt_tuning", "class_label", 1): (0.70, 0.72),
    ("prompt_tuning", "class_label", 100): (0.80, 0.82),
    ("lora", None, None): (0.84, 0.86),
    ("full_finetune", None, None): (0.88, 0.90),
}


def verdicts(records):
    return {c.id: c.verdict for c in check_claims(summarize(records))}


def test_claim_verdicts_follow_the_paired_statistics(tmp_path):
    # nested predictions: (a) .81 ≥ .75 ≥ .61 with tight paired CIs; (b) 20 tokens beat 1 by .10
    # and 100 tokens predict exactly as 20 (gain 0, CI [0, 0]: non-inferior); (c) full FT .89 beats
    # the best prompt on validation; (d) 100 tokens = 57,600 parameters: 2,335x fewer than full
    # fine-tuning, but only 8x fewer than LoRA's 460,800 (d')
    v = verdicts(lester_records(LESTER, tmp_path))
    assert v == {"a": SUPPORTED, "b": SUPPORTED, "c": SUPPORTED, "d": SUPPORTED, "d′": NOT_SUPPORTED}, v
    no100 = {k: x for k, x in LESTER.items() if k[2] != 100}
    v = verdicts(lester_records(no100, tmp_path / "no100"))
    assert v["d′"] == SUPPORTED and "b" not in v  # the claim needs 1, 20 and 100 tokens


def test_claims_are_inconclusive_when_the_data_cannot_tell(tmp_path):
    noisy = dict(LESTER)
    noisy[("prompt_tuning", "sample_frequent", 20)] = (0.80, 0.82)  # = class_label, but independent
    noisy[("full_finetune", None, None)] = (0.81, 0.83)  # +.01 over the best prompt, independent
    v = verdicts(lester_records(noisy, tmp_path, streams={("prompt_tuning", "sample_frequent", 20): 1,
                                                          ("full_finetune", None, None): 2}))
    # independent predictions: a paired CI of about ±.035, wider than the 1-point margin
    assert v["a"] == INCONCLUSIVE and v["c"] == INCONCLUSIVE, v
    worse = dict(LESTER)
    worse[("prompt_tuning", "random", 20)] = (0.85, 0.87)  # random beats the sampled vocabulary
    worse[("prompt_tuning", "class_label", 100)] = (0.90, 0.92)  # 100 tokens gain .10: not "little"
    v = verdicts(lester_records(worse, tmp_path / "worse"))
    assert v["a"] == NOT_SUPPORTED and v["b"] == NOT_SUPPORTED, v


def test_claim_c_chooses_the_prompt_variant_on_validation_not_test(tmp_path):
    acc = dict(LESTER)
    records = lester_records(acc, tmp_path)
    for r in records:  # the 1-token prompt looks best on validation; test says otherwise
        if r.run.method == "prompt_tuning":
            tokens = r.run.method_config["num_virtual_tokens"]
            r.validation["accuracy"].value = 0.95 if tokens == 1 else 0.5
    claims = {c.id: c for c in check_claims(summarize(records))}
    assert "num_virtual_tokens=1) (best on validation)" in claims["c"].evidence, claims["c"].evidence


def test_claims_without_predictions_are_inconclusive():
    records = [rec(m, s, a, 100, config=pt(i, n) if m == "prompt_tuning" else {"lr": 1e-3})
               for (m, i, n), accs in LESTER.items() for s, a in enumerate(accs)]
    claims = {c.id: c for c in check_claims(summarize(records))}
    assert claims["a"].verdict == INCONCLUSIVE and "no per-example predictions" in claims["a"].evidence


def test_claim_e_gap_shrinks_with_model_size(tmp_path):
    small = {("prompt_tuning", "class_label", 20): (0.70, 0.72), ("full_finetune", None, None): (0.80, 0.82)}
    large = {("prompt_tuning", "class_label", 20): (0.80, 0.82), ("full_finetune", None, None): (0.82, 0.84)}
    records = (lester_records(small, tmp_path, model="smollm2-135m", total=134_515_008)
               + lester_records(large, tmp_path, model="smollm2-360m", total=361_821_120))
    claims = {c.id: c for c in check_claims(summarize(records))}
    assert claims["e"].verdict == SUPPORTED and claims["e"].model == "smollm2-135m, smollm2-360m", claims["e"]
    flat = lester_records(small, tmp_path / "f", model="smollm2-135m") + lester_records(
        small, tmp_path / "f", model="smollm2-360m", total=361_821_120)
    assert {c.id: c.verdict for c in check_claims(summarize(flat))}["e"] == INCONCLUSIVE


def _tables_and_images(md: str):
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(md)
    tables = [t for t in tokens if t.type == "table_open"]
    images = [c.attrs["src"] for t in tokens if t.type == "inline" for c in (t.children or []) if c.type == "image"]
    return tokens, tables, images


def test_report_renders_tables_and_figures(tmp_path):
    """The README parses as markdown: every pipe-table block renders as a table with as many cells
    per row as header cells, every image link names a PNG in the folder of a sane size."""
    from PIL import Image

    records = lester_records(LESTER, tmp_path) + [rec("lora", 0, None, 1, status="failed", config={"lr": 9.0})]
    path = write_report(records, tmp_path, "t", "peftbench report x", studies=("lester",))
    md = path.read_text()
    tokens, tables, images = _tables_and_images(md)
    blocks = re.findall(r"(?:^\|.*\n)+", md, flags=re.M)
    assert len(tables) == len(blocks) >= 3  # header, the task, the claims
    for block in blocks:
        widths = {len(re.findall(r"(?<!\\)\|", line)) for line in block.strip().splitlines()}
        assert len(widths) == 1, block
    assert {"pareto_t.png", "memory_t.png", "curves_t.png", "grid_t_prompt_tuning_init.png",
            "grid_t_prompt_tuning_num_virtual_tokens.png"} <= set(images)
    for src in images:
        with Image.open(tmp_path / src) as im:
            assert im.format == "PNG" and 300 <= im.width <= 3000 and 200 <= im.height <= 2000
    assert "| (a) Prompt initialisation" in md and "**supported**" in md and "**not supported**" in md
    assert "**failed**" in md  # the failed run is listed, not hidden


def test_table_bold_marks_best_and_pareto_in_summary(tmp_path):
    s = summarize(lester_records(LESTER, tmp_path))
    table = make_table(lester_records(LESTER, tmp_path), "t")
    row = next(line for line in table.splitlines() if line.startswith("| full_finetune"))
    assert "**0.890 [" in row and "| 1 " in row  # significantly better than every other variant
    assert table.count("**0.") == 1  # no other accuracy is bold
    assert "**576**" in table  # 1-token prompt: fewest trainable parameters
    front = pareto_front(list(s["trainable_params"]), list(s["accuracy"]))
    on = set(s.loc[front, "label"])
    assert on == {"prompt_tuning (init=class_label, num_virtual_tokens=1)",
                  "prompt_tuning (init=class_label, num_virtual_tokens=20)",
                  "lora", "full_finetune"}  # 100 tokens: as accurate as 20, with more parameters


def test_compare_flags_significant_changes_only(tmp_path, capsys, monkeypatch):
    from peft_bench.cli import main

    a = lester_records(LESTER, tmp_path / "a")
    changed = dict(LESTER)
    changed[("lora", None, None)] = (0.70, 0.72)  # -.14 on the same examples: significant
    changed[("full_finetune", None, None)] = (0.885, 0.905)  # +.005, independent predictions: noise
    b = lester_records(changed, tmp_path / "b", streams={("full_finetune", None, None): 3})
    for name, recs in (("a", a), ("b", b)):
        for r in recs:
            append_record(tmp_path / name / "results.jsonl", r)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "compare.md").read_text()
    lines = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in md.splitlines() if line.startswith("| m")}
    assert "**significant (-0.140" in lines[("m / t / lora", "accuracy")], lines[("m / t / lora", "accuracy")]
    assert "0.835" in lines[("m / t / lora", "accuracy")]
    assert "no significant change" in lines[("m / t / full_finetune", "accuracy")]
    assert "1.000" in lines[("m / t / lora", "trainable params")]
    _, tables, _ = _tables_and_images(md)
    assert len(tables) == 1
    with pytest.raises(SystemExit):
        main(["compare", str(tmp_path / "a")])
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "nope")]) == 2
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0  # no --out: standard output only
    assert capsys.readouterr().out.strip() == md.strip() and sorted(p.name for p in tmp_path.iterdir()) == before


def test_report_of_an_untrained_baseline_alone(tmp_path):
    """Zero trainable parameters cannot go on a log axis: the report still renders, and says so
    by leaving that panel out rather than failing."""
    path = write_report([rec("zero_shot", 0, 0.78, 0)], tmp_path, "t", "c")
    _, tables, images = _tables_and_images(path.read_text())
    assert len(tables) == 3 and all((tmp_path / i).is_file() for i in images)  # headline, settings, the task


def _pid_job(tag: str) -> tuple:
    import os

    return tag, os.getpid()


def _fails_outside(parent: int) -> int:
    import os

    if os.getpid() != parent:
        raise RuntimeError("a worker failed")
    return parent


def test_figures_are_drawn_by_workers_in_order_and_redrawn_here_if_a_worker_fails():
    import os
    import sys

    from peft_bench.results import plots

    jobs = [(_pid_job, (t,)) for t in "abcd"]
    out = plots.draw(jobs)
    assert [t for t, _ in out] == list("abcd")  # results in the jobs' order
    if sys.platform.startswith("linux") and len(os.sched_getaffinity(0)) > 1:
        assert all(pid != os.getpid() for _, pid in out)  # drawn in forked workers
    # one job fails in its worker: every figure is drawn in this process instead
    assert plots.draw([(_fails_outside, (os.getpid(),)), (_pid_job, ("x",))]) == [os.getpid(), ("x", os.getpid())]


def test_labels_name_only_the_settings_that_vary_within_a_task():
    """Two tasks have different data (as they always do): no label names it. Two step counts of one
    task are two rows, each labelled by its steps."""
    from peft_bench.results.aggregate import variant_labels

    a = rec("lora", 0, 0.8, 2000, task="t1")
    b = rec("lora", 0, 0.9, 2000, task="t2")
    c = rec("lora", 0, 0.7, 2000, task="t1")
    for r, steps, data in ((a, 2, "x"), (b, 2, "y"), (c, 3, "x")):
        r.run.train = {"seed": 0, "steps": steps}
        r.run.data = {"sha256": data * 64}
    c.run.run_id += "-steps3"
    labels = sorted(variant_labels([a, b, c]).values())
    assert labels == ["lora", "lora (steps=2)", "lora (steps=3)"], labels


def test_a_figure_that_cannot_be_written_is_named_and_the_report_still_written(tmp_path, capsys):
    """A figure whose file cannot be written (here: a folder already holds its name) is listed in
    the report and on stderr; the markdown is written whole."""
    records = [rec("prompt_tuning", 0, 0.7, 100), rec("lora", 0, 0.8, 2000)]
    (tmp_path / "pareto_t.png").mkdir()  # savefig cannot write a file there
    path = write_report(records, tmp_path, "r", "cmd")
    text = path.read_text()
    assert "_(a figure could not be drawn: pareto: " in text and "## t" in text
    assert "peftbench: warning: a figure was not drawn: pareto:" in capsys.readouterr().err
    assert (tmp_path / "memory_t.png").is_file()  # the other figures are there


def test_a_task_on_two_models_with_many_methods_gets_a_section_per_model(tmp_path):
    """Variants compete within one model: each model of a task has its own section, ranks and
    figures; with more methods than a legend can tell apart, the Pareto plot names the front's
    points and greys the rest, and memory is drawn one row per variant (all legible sizes)."""
    from PIL import Image

    methods = [f"m{i:02d}" for i in range(14)]
    records = []
    for model, best in (("small", 0.70), ("big", 0.90)):
        for i, m in enumerate(methods):
            # stream=None: nested correctness, so a 0.04 gap over 1,000 paired examples is significant
            records.append(rec(m, 0, best - 0.04 * (i % 3), 10 ** (2 + i % 5), model=model, root=tmp_path,
                               mem=(100 + 10 * i) * 2**20))
    path = write_report(records, tmp_path, "two models", "peftbench report x")
    md = path.read_text()
    _, tables, images = _tables_and_images(md)
    assert "## t on big" in md and "## t on small" in md and len(tables) == 1 + 1 + 2  # headline, settings, sections
    small = md[md.index("## t on small"):]
    big = md[md.index("## t on big"):md.index("## t on small")]
    # within each model, the methods at its best accuracy rank first; across models they would not
    # (the model is the same in every row of a section: stated once above its table)
    assert "Same in every row: model: small" in small and re.search(r"\| m00\s+\| \*\*0\.700", small)
    assert "Same in every row: model: big" in big and re.search(r"\| m00\s+\| \*\*0\.900", big)
    assert {"pareto_t_on_big.png", "pareto_t_on_small.png", "memory_t_on_big.png", "curves_t_on_small.png"} <= set(images)
    for src in images:
        with Image.open(tmp_path / src) as im:
            assert im.format == "PNG" and 300 <= im.width <= 3000 and 200 <= im.height <= 2000, (src, im.size)


def test_a_report_keeps_its_notes_for_the_command_that_regenerates_it(tmp_path, capsys):
    """`--notes` is saved beside the report (NOTES.md); the reproduce command in its header, which
    has no --notes, regenerates the same text."""
    from peft_bench.cli import main

    for r in (rec("lora", 0, 0.8, 10, root=tmp_path), rec("prompt_tuning", 0, 0.7, 10, root=tmp_path)):
        append_record(tmp_path / "results.jsonl", r)
    assert main(["report", str(tmp_path), "--notes", "Timing caveat: seed 1 shared the machine."]) == 0
    first = (tmp_path / "README.md").read_text()
    command = re.search(r"\| reproduce \| `peftbench report (\S+) --out (\S+)` \|", first)
    assert main(["report", command.group(1), "--out", command.group(2)]) == 0
    assert (tmp_path / "README.md").read_text() == first and "Timing caveat: seed 1 shared the machine." in first


def test_the_summary_is_exported_beside_the_report_and_colours_are_fixed_per_method(tmp_path):
    """summary.csv and summary.parquet hold one row per variant with the table's numbers; a
    method has the same colour in every report, whatever other methods it holds."""
    import pandas as pd

    from peft_bench.results import plots

    records = [rec("lora", 0, 0.8, 2000, root=tmp_path), rec("prompt_tuning", 0, 0.75, 100, root=tmp_path),
               rec("ia3", 0, 0.7, 300, root=tmp_path)]
    write_report(records, tmp_path, "t", "peftbench report x")
    csv, parquet = pd.read_csv(tmp_path / "summary.csv"), pd.read_parquet(tmp_path / "summary.parquet")
    assert sorted(csv["label"]) == sorted(parquet["label"]) == ["ia3", "lora", "prompt_tuning"]
    assert {"accuracy", "accuracy_low", "accuracy_high", "rank_low", "trainable_params", "stored_bytes"} <= set(csv.columns)
    assert csv.set_index("label").loc["lora", "trainable_params"] == 2000
    numbers = parquet.select_dtypes("number").columns
    assert len(numbers) > 10
    pd.testing.assert_frame_equal(csv[numbers], parquet[numbers], check_dtype=False)
    one, other = plots.method_colours(["ia3", "lora"]), plots.method_colours(["vera", "ia3", "boft", "zero_shot"])
    assert one["ia3"] == other["ia3"] and one["lora"] == plots.FIXED_COLOURS["lora"]
    assert len(set(plots.FIXED_COLOURS.values())) == len(plots.FIXED_COLOURS)
    greys = set(plots.PHASE_COLOURS.values())
    assert not greys & ({*plots.FIXED_COLOURS.values(), *plots._OTHER_COLOURS})


def test_switch_latency_is_drawn_as_points_with_p90_whiskers(tmp_path):
    """A log axis with bars would make bar length meaningless: the switch figure draws points, with
    a whisker from the median up to the 90th percentile."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from peft_bench.results import plots

    rows = pd.DataFrame([{"model": "m", "method": m, "label": m, "warm_switch_s": w, "warm_switch_p90_s": 2 * w,
                          "cold_switch_s": 10 * w, "cold_switch_p90_s": 12 * w, "forward_s": 0.05,
                          "forward_p90_s": 0.06} for m, w in (("lora", 1e-4), ("prompt_tuning", 1e-5))])
    drawn = {}
    real_save = plots._save
    plots._save = lambda fig, out, name, rect=(0, 0, 1, 1): drawn.setdefault("fig", fig) and real_save(fig, out, name, rect)
    try:
        assert plots.switch_points(rows, tmp_path) == "switch.png"
    finally:
        plots._save = real_save
    ax = drawn["fig"].axes[0]
    assert ax.get_yscale() == "log" and not ax.patches  # no bars
    whiskers = [seg for c in ax.collections for seg in c.get_segments()]
    assert any(abs(seg[1][1] - 0.2) < 1e-9 and abs(seg[0][1] - 0.1) < 1e-9 for seg in whiskers)  # lora warm: 0.1 -> 0.2 ms
    plt.close("all")


def test_the_headline_names_winners_ties_budgets_and_a_leaderboard(tmp_path):
    """Best accuracy with the variants not significantly worse named beside it; the fewest
    parameters among the variants that trained; a flagged run wins no resource axis; the budget
    line picks the best within 1 MB stored; a second task adds the leaderboard."""
    from peft_bench.results.headline import headline

    records = lester_records(LESTER, tmp_path)
    near = dict(LESTER)
    near[("lora", None, None)] = (0.88, 0.90)  # tied with full fine-tuning on the same examples
    other = [dataclasses.replace(r, run=dataclasses.replace(r.run, task="u")) for r in lester_records(near, tmp_path / "u")]
    s = summarize(records + other)
    secs = [("t", None, "t", "accuracy"), ("u", None, "u", "accuracy")]
    md = "\n".join(headline(s, secs))
    best = next(line for line in md.splitlines() if line.startswith("| best accuracy"))
    cells = [c.strip() for c in best.split("|")[2:4]]
    assert cells[0].startswith("full_finetune 0.890 [") and "not significantly worse" not in cells[0]
    assert "not significantly worse: lora" in cells[1]
    fewest = next(line for line in md.splitlines() if line.startswith("| fewest trainable params"))
    assert "prompt_tuning (init=class_label, num_virtual_tokens=1) (576)" in fewest
    assert "t: 1 MB: prompt_tuning (init=class_label, num_virtual_tokens=20) 0.810" in md  # lora stores more
    assert "**Across the 2 sections**" in md and md.index("full_finetune 1.0") < md.index("prompt_tuning (init=random")
    # a variant flagged "did not train" wins no resource axis
    flagged = s.copy()
    flagged.loc[flagged["trainable_params"] == 576, "did_not_train"] = "loss did not fall"
    fewest = next(line for line in "\n".join(headline(flagged, secs)).splitlines()
                  if line.startswith("| fewest trainable params"))
    assert "(576)" not in fewest and "(11.52k)" in fewest


def test_a_category_grid_is_drawn_as_points_not_bars(tmp_path):
    """The init grid's y axis starts near the scores: bars there would mislead by their length, so
    each setting is a point with its CI."""
    import matplotlib.pyplot as plt

    from peft_bench.results import plots

    s = summarize(lester_records(LESTER, tmp_path))
    drawn = []
    real_save = plots._save
    plots._save = lambda fig, out, name, rect=(0, 0, 1, 1): drawn.append(fig) or real_save(fig, out, name, rect)
    try:
        names = plots.grid_plots(s[s["method"] == "prompt_tuning"], {"prompt_tuning": ["init", "num_virtual_tokens"]},
                                 "accuracy", tmp_path, "t")
    finally:
        plots._save = real_save
    assert names and drawn
    for fig in drawn:
        for ax in fig.axes:
            assert not ax.patches, "a grid figure draws bars"
            assert ax.get_ylabel() and ax.get_xlabel()
    plt.close("all")
