"""Result records pooled over seeds: the one place every table, figure, claim and comparison
reads its numbers from.

``summarize(records, switch)`` returns a pandas DataFrame with one row per *variant*: the runs that
finished ok and differ only by their seed (same model, task, method and method config, training
settings and data), pooled over seeds. Columns:

- identity: ``model``, ``task``, ``method``, ``config`` (dict), ``label`` (method plus the config
  values and training settings that vary between variants, e.g.
  ``prompt_tuning (num_virtual_tokens=20)`` or ``lora (steps=200)``), ``key``;
- ``n``: runs (seeds) pooled; ``steps``: training steps of the runs;
- per metric M (``accuracy``, ``f1``, ...): ``M`` (mean over seeds), ``M_std`` (sample std over
  seeds, NaN for one seed), ``M_stderr`` (mean of the runs' standard errors over test examples),
  ``val_M`` (mean over seeds of the validation score after the last step);
- accuracy's 95% interval over test examples and seeds (``results.stats.accuracy_ci`` on the
  per-example predictions): ``accuracy_low``, ``accuracy_high`` (NaN without predictions), and
  ``rank_low`` / ``rank_high``: the band of ranks the variant may take within its task, from paired
  comparisons with every other variant of the task (``rank_bands``); ``correct``: the
  (seeds, examples) correctness matrix and its example ids (None without predictions);
- ``did_not_train``: why the variant is flagged as not having trained ("" if not: ``training_problem``);
- hyperparameter search (``results.selection``): ``search`` (the values chosen on validation, or
  None), ``trials`` (every trial's values and validation score);
- parameters: ``trainable_params``, ``total_params``, ``pct_trainable``, ``trainable_head_params``,
  ``stored_params``, ``stored_bytes``;
- resources (mean over seeds, and ``<name>_std``): ``peak_mem_train_bytes``, ``peak_mem_eval_bytes``,
  ``train_time_s``, ``step_time_median_s``, ``eval_examples_per_s``, ``train_examples_per_s``,
  ``run_wall_s``, ``tokens_per_s``, ``mfu`` (``engine.throughput``), ``forgetting`` (causal LMs:
  ``engine.forgetting``);
- task switching, when measured (``peftbench switch``; medians of the latest measurement that
  served this variant's runs): ``warm_switch_s`` (activate), ``cold_switch_s`` (load + activate),
  ``forward_s`` (the forward alone), ``warm_first_output_s`` / ``cold_first_output_s`` (switch +
  first forward); each with its 90th percentile, ``<name>_p90_s``.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict

import pandas as pd

from peft_bench.interface.answers import PER_EXAMPLE
from peft_bench.results import stats
from peft_bench.results.predictions import correctness
from peft_bench.results.schema import SWITCH_SCHEMA_VERSION, ResultRecord
from peft_bench.results.variants import group, settings

PARAM_COLUMNS = ("trainable_params", "total_params", "trainable_head_params", "stored_params", "stored_bytes")
RESOURCE_COLUMNS = ("peak_mem_train_bytes", "peak_mem_eval_bytes", "train_time_s", "step_time_median_s",
                    "eval_examples_per_s", "train_examples_per_s", "run_wall_s", "tokens_per_s", "mfu", "forgetting")
SWITCH_COLUMNS = {"warm_switch_s": "warm_switch", "cold_switch_s": "cold_switch", "forward_s": "forward",
                  "warm_first_output_s": "warm_first_output", "cold_first_output_s": "cold_first_output"}
HIGHER_IS_BETTER_COLUMNS = {"eval_examples_per_s", "train_examples_per_s", "tokens_per_s", "mfu"}


def natural_key(text: str) -> list:
    """Sort key that puts num_virtual_tokens=5 before =20 before =100."""
    return [float(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+(?:\.\d+)?)", text))]


def varying_keys(records: list[ResultRecord]) -> dict[str, list[str]]:
    """Per method, the config fields whose value differs between its variants (the grid axes)."""
    configs: dict[str, list[dict]] = defaultdict(list)
    for recs in group(records).values():
        configs[recs[0].run.method].append(recs[0].run.method_config)
    return {m: sorted(k for k in set().union(*cs) if len({repr(c.get(k)) for c in cs}) > 1)
            for m, cs in configs.items()}


def varying_settings(records: list[ResultRecord]) -> dict[str, list[str]]:
    """Per task (a report's table), the training settings (and data) whose value differs between
    its variants."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for recs in group(records).values():
        by_task[recs[0].run.task].append(settings(recs[0].run))
    return {t: sorted(k for k in set().union(*cs) if len({repr(c.get(k)) for c in cs}) > 1)
            for t, cs in by_task.items()}


def variant_labels(records: list[ResultRecord]) -> dict[tuple, str]:
    """Row label per variant: the method name, plus the config values that vary between its
    variants (grids) and the training settings that vary between the variants of its section (one
    task on one model), e.g.
    ``prompt_tuning (init=random, num_virtual_tokens=20)``, ``lora (steps=200)``."""
    sections: dict[tuple, list[ResultRecord]] = defaultdict(list)  # a report's section: one model, one task
    for r in records:
        sections[(r.run.task, r.run.model)].append(r)
    labels = {}
    for part in sections.values():
        varying, varying_set = varying_keys(part), varying_settings(part)
        for key, recs in group(part).items():
            method, cfg, st = key[2], recs[0].run.method_config, settings(recs[0].run)
            parts = [f"{k}={cfg.get(k)}" for k in varying.get(method, [])]
            parts += [f"{k}={_short(st.get(k))}" for k in varying_set.get(key[1], [])]
            labels[key] = method + (f" ({', '.join(parts)})" if parts else "")
    return labels


def _short(value) -> str:
    """A setting's value in a label (a data fingerprint by its first characters)."""
    if isinstance(value, dict) and "sha256" in value:
        return str(value["sha256"])[:8]
    return str(value)


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else math.nan


def _std(xs) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.stdev(xs) if len(xs) > 1 else math.nan


def spread(std: float, stderr: float) -> float:
    """The uncertainty every comparison uses: the std over seeds when there are several seeds,
    else the standard error over the test examples of the one run (NaN when neither is known)."""
    return std if not math.isnan(std) else stderr


def latest_switch(switch: list[dict] | None) -> list[dict]:
    """The latest measurement of each group of runs: a re-measurement replaces the earlier one.
    Measurements of an earlier schema (whose figures meant something else) are left out."""
    return list({tuple(s.get("run_ids", [])): s for s in (switch or [])
                 if s.get("schema_version") == SWITCH_SCHEMA_VERSION}.values())


def _switch_by_run(switch: list[dict] | None) -> dict[str, dict]:
    return {rid: s for s in latest_switch(switch) if s.get("status") == "ok" for rid in s.get("run_ids", [])}


LOSS_FALL = 0.05  # a run trained when its final loss is at least 5% below its first


def training_problem(r: ResultRecord) -> str | None:
    """Why a finished run did not train, or None: its loss did not fall (final 10 steps' mean not
    ``LOSS_FALL`` below the first 10's), or its validation accuracy never rose above always
    answering the majority class (by more than two standard errors of that rate)."""
    res, base = r.resources, r.baselines
    if not res.train_steps:
        return None  # nothing to train (a zero-shot baseline)
    if res.first_loss is not None and res.final_loss is not None and res.final_loss > (1 - LOSS_FALL) * res.first_loss:
        return f"loss did not fall ({res.first_loss:.3f} → {res.final_loss:.3f})"
    main = next((m for m in r.metrics if m in PER_EXAMPLE), "accuracy")
    val = [p.get(main) for p in (r.curves.validation or []) if p.get(main) is not None]
    m, n = base.majority_val_accuracy, r.run.n_validation
    if val and m is not None and n:
        bar = m + 2 * math.sqrt(m * (1 - m) / n)
        if max(val) <= bar:
            return (f"validation {main} never rose two standard errors above the majority class (best "
                    f"{max(val):.3f}, majority {m:.3f}, bar {bar:.3f} on {n} examples)")
    return None


def _did_not_train(recs: list[ResultRecord]) -> str:
    problems = [(r, p) for r in recs if (p := training_problem(r))]
    if not problems:
        return ""
    seeds = ", ".join(str((r.run.train or {}).get("seed")) for r, _ in problems)
    return f"{len(problems)} of {len(recs)} seed(s) (seed {seeds}): {problems[0][1]}"


def _mean_curve(curves: list[list[tuple]]) -> list[tuple[float, float]]:
    """A curve averaged over seeds at the steps every seed has."""
    curves = [dict(c) for c in curves if c]
    if not curves:
        return []
    steps = sorted(set(curves[0]).intersection(*curves[1:]))
    return [(s, statistics.fmean(c[s] for c in curves)) for s in steps]


def _aligned(a: tuple, b: tuple):
    """Two correctness matrices restricted to the examples both have, in one order."""
    (ma, ia), (mb, ib) = a, b
    if ia == ib:
        return ma, mb
    common = sorted(set(ia) & set(ib))
    if not common:
        return None
    pa, pb = {x: k for k, x in enumerate(ia)}, {x: k for k, x in enumerate(ib)}
    return ma[:, [pa[x] for x in common]], mb[:, [pb[x] for x in common]]


def compare_pair(a: tuple | None, b: tuple | None) -> stats.Estimate | None:
    """accuracy(a) - accuracy(b), paired on the examples both were scored on (``correct`` values)."""
    if a is None or b is None:
        return None
    got = _aligned(a, b)
    return None if got is None else stats.paired_difference(*got)


def rank_bands(correct: list) -> list[tuple[int, int]]:
    """For each variant (its ``correct`` value), the ranks it may take: 1 + the number of variants
    significantly better than it, to n - the number significantly worse. Every pair is compared
    paired on their shared examples; significance is Holm-corrected over all pairs at 5%. A
    variant without predictions gets (0, 0): no band."""
    n = len(correct)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    diffs = {p: compare_pair(correct[p[0]], correct[p[1]]) for p in pairs}
    tested = [p for p in pairs if diffs[p] is not None]
    adjusted = dict(zip(tested, stats.holm([diffs[p].p_value for p in tested])))
    better = [0] * n  # how many are significantly better than i
    worse = [0] * n
    for (i, j) in tested:
        v = stats.verdict(diffs[(i, j)], p_adjusted=adjusted[(i, j)])
        if v == stats.BETTER:
            better[j] += 1
            worse[i] += 1
        elif v == stats.WORSE:
            better[i] += 1
            worse[j] += 1
    have = sum(c is not None for c in correct)
    return [(1 + better[i], have - worse[i]) if correct[i] is not None else (0, 0) for i in range(n)]


def summarize(records: list[ResultRecord], switch: list[dict] | None = None) -> pd.DataFrame:
    from peft_bench.results.selection import select

    ok = [r for r in records if r.status == "ok"]
    labels = variant_labels(ok)
    by_run = _switch_by_run(switch)
    rows = []
    groups, chosen = select(group(ok))
    for key, recs in groups.items():
        row: dict = {"model": key[0], "task": key[1], "method": key[2], "key": key,
                     "config": dict(recs[0].run.method_config), "label": labels[key], "n": len(recs),
                "steps": (recs[0].run.train or {}).get("steps", math.nan)}
        for name in sorted({m for r in recs for m in r.metrics}):
            vals = [r.metrics[name].value for r in recs if name in r.metrics]
            row[name] = _mean(vals)
            row[f"{name}_std"] = _std(vals)
            row[f"{name}_stderr"] = _mean([r.metrics[name].stderr for r in recs if name in r.metrics])
            row[f"{name}_spread"] = spread(row[f"{name}_std"], row[f"{name}_stderr"])
            row[f"val_{name}"] = _mean([r.validation[name].value for r in recs if name in r.validation])
        row["correct"] = correctness(recs)
        ci = stats.accuracy_ci(row["correct"][0]) if row["correct"] is not None else None
        main = next(iter(recs[0].metrics), "accuracy")
        for name in PER_EXAMPLE:  # the interval of the per-example metric the predictions score
            hit = ci if name == main else None
            row[f"{name}_low"], row[f"{name}_high"] = (hit.low, hit.high) if hit else (math.nan, math.nan)
        row["did_not_train"] = _did_not_train(recs)
        row["loss_curve"] = _mean_curve([[(p[0], p[1]) for p in (r.curves.train_loss or [])] for r in recs])
        row["val_curve"] = _mean_curve([[(p["step"], p[main]) for p in (r.curves.validation or []) if main in p]
                                        for r in recs])
        row["search"], row["trials"] = chosen.get(key, (None, []))
        for c in PARAM_COLUMNS:
            v = getattr(recs[0].params, c)
            row[c] = math.nan if v is None else v
        total = row["total_params"]
        row["pct_trainable"] = 100 * row["trainable_params"] / total if total and not math.isnan(total) else math.nan
        for c in RESOURCE_COLUMNS:
            vals = [getattr(r.resources, c) for r in recs]
            row[c], row[f"{c}_std"] = _mean(vals), _std(vals)
        sw = [by_run[r.run_id] for r in recs if r.run_id in by_run]
        for col, name in SWITCH_COLUMNS.items():
            row[col] = _mean([s[name]["median_s"] for s in sw if name in s])
            row[col.removesuffix("_s") + "_p90_s"] = _mean([s[name]["p90_s"] for s in sw if "p90_s" in s.get(name, {})])
        base = [r.baselines.majority_accuracy for r in recs if r.baselines.majority_accuracy is not None]
        row["majority_accuracy"] = base[0] if base else math.nan
        rows.append(row)
    rows.sort(key=lambda r: (str(r["task"]), str(r["model"]), natural_key(r["label"])))
    for section in {(r["task"], r["model"]) for r in rows}:  # variants compete within one model and task
        mine = [r for r in rows if (r["task"], r["model"]) == section]
        for r, (lo, hi) in zip(mine, rank_bands([r["correct"] for r in mine])):
            r["rank_low"], r["rank_high"] = lo, hi
    return pd.DataFrame(rows)


def pareto_front(cost: list[float], value: list[float]) -> list[bool]:
    """Which points are Pareto-optimal when cost is minimised and value maximised: no other point
    is at least as good on both and strictly better on one. NaN points are never on the front."""
    pts = list(zip(cost, value))
    out = []
    for i, (c, v) in enumerate(pts):
        if math.isnan(c) or math.isnan(v):
            out.append(False)
            continue
        dominated = any(j != i and not (math.isnan(c2) or math.isnan(v2)) and c2 <= c and v2 >= v and (c2 < c or v2 > v)
                        for j, (c2, v2) in enumerate(pts))
        out.append(not dominated)
    return out
