"""Reports from result records alone: tables (``make_table``), figures (``peft_bench.results.plots``), the
paper-claim checks (``peft_bench.studies.lester``) and ``write_report``, which writes README.md plus PNGs.

Every number comes from ``peft_bench.results.aggregate.summarize``: rows are variants (runs of the same
model/task/method/config pooled over seeds; a search's trials reduced to the one chosen on
validation), plus the majority-class baseline of the task. Accuracy shows its mean with a 95%
confidence interval over test examples and seeds, and its rank band from paired comparisons; it is
bold only when no other variant is significantly better. Parameter counts are exact: the smallest
is bold. Time and memory carry no interval and are never bold.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from peft_bench.core.paths import write_whole
from peft_bench.interface.answers import PER_EXAMPLE
from peft_bench.results.aggregate import summarize, varying_keys
from peft_bench.results.headline import headline
from peft_bench.results.tables import md_table
from peft_bench.results.html import write_page
from peft_bench.results.serving_tables import switch_tables
from peft_bench.results.provenance import _header, lock_summary, memory_note, peak_note  # noqa: F401 (lock_summary: re-exported)
from peft_bench.results.store import ResultRecord
from peft_bench.results.units import fmt_bytes, fmt_count, fmt_ms, fmt_pct, fmt_s


def _num(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _metric_cell(row: pd.Series, name: str) -> str:
    """Mean [95% CI] where the interval is known (accuracy with per-example predictions); else the
    mean, ± the std over seeds when there are several."""
    if math.isnan(row.get(name, math.nan)):
        return "—"
    lo, hi = row.get(f"{name}_low", math.nan), row.get(f"{name}_high", math.nan)
    if not (math.isnan(lo) or math.isnan(hi)):
        return f"{row[name]:.3f} [{lo:.3f}, {hi:.3f}]"
    std = row.get(f"{name}_std", math.nan)
    return f"{row[name]:.3f}" + (f" ± {std:.3f} (std)" if not math.isnan(std) else "")


def _rank(row: pd.Series) -> str:
    lo, hi = row.get("rank_low", 0), row.get("rank_high", 0)
    if not lo or (isinstance(lo, float) and math.isnan(lo)):
        return "—"
    return f"{int(lo)}" if lo == hi else f"{int(lo)}–{int(hi)}"


def _columns(metric_names: tuple[str, ...], with_switch: bool, with_forgetting: bool = False) -> list[tuple]:
    """(title, summary column, formatter, which value is bold: "rank" (accuracy: no variant
    significantly better), "min" (exact counts: the smallest) or None)."""
    cols: list[tuple] = [(f"{m} ↑" + (" [95% CI]" if m in PER_EXAMPLE else ""), m, None,
                          "rank" if m in PER_EXAMPLE else None) for m in metric_names]
    cols += [
        ("rank", "rank_low", None, None),
        (f"validation {metric_names[0]}", f"val_{metric_names[0]}", lambda v: f"{v:.3f}", None),
        ("n", "n", lambda v: f"{int(v)}", None),
        ("lr", "lr", lambda v: f"{v:.0e}".replace("e-0", "e-"), None),
        ("trainable params ↓", "trainable_params", fmt_count, "min"),
        ("% of total", "pct_trainable", fmt_pct, None),
        ("of which head", "trainable_head_params", fmt_count, None),
        ("stored ↓", "stored_bytes", fmt_bytes, "min"),
        ("peak train mem ↓", "peak_mem_train_bytes", fmt_bytes, None),
        ("peak eval mem ↓", "peak_mem_eval_bytes", fmt_bytes, None),
        ("train time ↓", "train_time_s", fmt_s, None),
        ("step time ↓", "step_time_median_s", fmt_s, None),
        ("tokens/s ↑", "tokens_per_s", lambda v: f"{v:,.0f}", None),
        ("MFU ↑", "mfu", lambda v: f"{v:.1%}", None),
    ]
    if with_forgetting:
        cols += [("forgetting ↓", "forgetting", lambda v: f"{v:+.3f}", None)]
    if with_switch:
        cols += [("warm switch ↓", "warm_switch_s", fmt_ms, None), ("cold switch ↓", "cold_switch_s", fmt_ms, None)]
    return cols


def make_table(records: list[ResultRecord], task: str, metric_names: tuple[str, ...] = ("accuracy",),
               switch: list[dict] | None = None) -> str:
    """Markdown comparison table for one task: one row per variant (successful runs pooled over
    seeds; failures are listed separately), the best value of each ↑/↓ column in bold (when there
    are several rows), and the task's majority-class baseline as the last row."""
    return table_from_summary(summarize([r for r in records if r.run.task == task], switch), metric_names)


def table_from_summary(summary: pd.DataFrame, metric_names: tuple[str, ...]) -> str:
    if summary.empty:
        return "_no successful runs_"
    # switch latencies are per model and set of tasks: they are in the Task switching table, once
    cols = _columns(metric_names, with_switch=False, with_forgetting=bool(summary["forgetting"].notna().any()))
    summary = summary.assign(lr=summary["config"].map(lambda c: (c or {}).get("lr") if isinstance(c, dict) else None))
    # the smallest exact count, as displayed: values that print the same are tied and all marked
    best = {title: fmt(summary[col].min()) for title, col, fmt, how in cols
            if how == "min" and len(summary) > 1 and summary[col].notna().any()}
    rows = []
    for _, r in summary.iterrows():
        flag = " — **did not train**" if r.get("did_not_train") else ""
        row = {"method": r["label"] + flag, "model": r["model"]}
        for title, col, fmt, how in cols:
            v = _num(r.get(col))
            if col in metric_names:
                cell = _metric_cell(r, col)
                bold = how == "rank" and len(summary) > 1 and r.get("rank_low") == 1
            elif col == "rank_low":
                cell, bold = _rank(r), False
            else:
                cell = "—" if v is None else fmt(v)
                bold = v is not None and best.get(title) == cell
            row[title] = f"**{cell}**" if bold else cell
        rows.append(row)
    extra = []
    base = summary["majority_accuracy"].dropna()
    if len(base):
        row = {k: "—" for k in rows[0]}
        first = next(t for t, col, _, _ in cols if col in metric_names)
        row.update({"method": "majority class (baseline)", first: f"{base.iloc[0]:.3f}"})
        extra.append(row)
    fixed = {"method"} | {t for t, col, _, _ in cols if col in metric_names}
    return md_table(rows, keep=fixed, extra=extra)


def _notes(rows: pd.DataFrame, metric: str) -> list[str]:
    """Below a task's table: the runs that did not train, and what each search chose on validation."""
    out = []
    bad = rows[rows["did_not_train"].astype(bool)] if "did_not_train" in rows else rows.iloc[0:0]
    if len(bad):
        out += ["**Did not train:** " + "; ".join(f"{r['label']}: {r['did_not_train']}" for _, r in bad.iterrows()), ""]
    searched = rows[rows["search"].notna()] if "search" in rows else rows.iloc[0:0]
    if len(searched):
        out += [f"Hyperparameters chosen on validation {metric} (mean over seeds; every method the same number "
                "of trials; the test split was not read to choose):", ""]
        table = []
        for _, r in searched.iterrows():
            for t in r["trials"]:
                table.append({"variant": r["label"], "trial": ", ".join(f"{k}={v}" for k, v in t["values"].items()),
                              f"validation {metric}": f"{t[f'validation {metric}']:.3f}", "seeds": t["seeds"],
                              "chosen": "**chosen**" if t["chosen"] else ""})
        out += [md_table(table, keep=("variant", "trial", f"validation {metric}", "chosen")), ""]
    return out


def _failures(records: list[ResultRecord]) -> str:
    bad = [r for r in records if r.status != "ok"]
    if not bad:
        return ""
    lines = ["## Runs that did not finish", ""]
    for r in bad:
        first = (r.error or "").strip().splitlines()[-1:] or [""]
        lines.append(f"- `{r.run.run_id}`: **{r.status}** — {first[0]}")
    return "\n".join(lines) + "\n"


def _data_line(recs: list[ResultRecord]) -> str:
    """Where a section's data came from and how many examples its runs used, from the records."""
    sources = set()
    for r in recs:
        d = r.run.data or {}
        where = r.run.task_source or (r.run.task_def or {}).get("source")
        kind = {"artifact": "the task's pinned package artifact", "local": "local data", "hub": "hub dataset",
                "builtin": "built-in data"}.get(d.get("kind"), "data")
        sha = f", sha256 {d['sha256'][:12]}…" if d.get("sha256") else ", not pinned"
        sources.add(f"{kind}{f' `{where}`' if where else ''}{sha}, task version {d.get('task_version', '?')}")
    sizes = sorted({(r.run.n_train, r.run.n_validation, r.run.n_test) for r in recs}, key=str)
    n = lambda v: "?" if v is None else f"{v:,}"  # noqa: E731
    used = "; ".join(f"{n(a)} train / {n(b)} validation / {n(c)} test" for a, b, c in sizes)
    return f"Data: {'; '.join(sorted(sources)) or 'not recorded'}. Examples used per run: {used or 'not recorded'}."


EXPORTS = ("summary.csv", "summary.parquet")


def export_summary(summary: pd.DataFrame, out_dir: Path) -> None:
    """The summary table beside the report, as CSV and Parquet: one row per variant, every scalar
    column (curves, per-example correctness and configs stay in the records). Each file is written
    whole (a temporary file, then renamed) or not at all."""
    if summary.empty:  # no variant: no table (an earlier report's exports must not stand for this one)
        for name in EXPORTS:
            (out_dir / name).unlink(missing_ok=True)
        return
    scalar = [c for c in summary.columns
              if not summary[c].map(lambda v: isinstance(v, (list, tuple, dict)) or hasattr(v, "shape")).any()]
    table = summary[scalar]
    write_whole(out_dir / EXPORTS[0], lambda f: table.to_csv(f, index=False))
    write_whole(out_dir / EXPORTS[1], lambda f: table.to_parquet(f, index=False))


def _sections(records: list[ResultRecord]) -> list[tuple[str, str | None]]:
    """(task, model) per report section: one per task, or one per model of a task run on several
    (model None: the task's only model)."""
    out = []
    for task in sorted({r.run.task for r in records}):
        models = sorted({r.run.model for r in records if r.run.task == task})
        out += [(task, m if len(models) > 1 else None) for m in models]
    return out


def write_report(records: list[ResultRecord], out_dir: Path, title: str, command: str,
                 notes: str = "", switch: list[dict] | None = None, figures: bool = True,
                 studies: tuple[str, ...] | list[str] = ()) -> Path:
    """Write ``out_dir/README.md`` and its PNG figures; everything in them comes from ``records``
    (and the ``switch`` measurements). ``studies``: the sections of the studies the suite opts
    into (``peft_bench.studies``), after the tables."""
    from peft_bench.studies import report_section

    from peft_bench.results import plots
    from peft_bench.core.registry import TASKS, load_builtin_plugins
    from peft_bench.interface.task_table import task_for

    load_builtin_plugins()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [p for pat in plots.FIGURE_PATTERNS for p in out_dir.glob(pat) if p.is_file()]:
        old.unlink()  # figures of an earlier report of this folder that this one may not redraw
    ok = [r for r in records if r.status == "ok"]
    summary = summarize(records, switch)
    export_summary(summary, out_dir)
    lines = [f"# {title}", ""]
    jobs: list[tuple[int, list]] = []  # (where in `lines` their links go, figures)
    sections = []  # (task, model, title, spec)
    for task, model in _sections(records):
        defs = [r.run.task_def for r in records if r.run.task == task and r.run.task_def]
        spec = task_for(task, defs[0]) if defs else TASKS.get(task) if task in TASKS else None
        sections.append((task, model, task if model is None else f"{task} on {model}", spec))
    by_metric = [(t, m, ti, sp.metrics[0] if sp else "accuracy") for t, m, ti, sp in sections]
    lines += headline(summary, by_metric)
    write_page(summary, ok, by_metric, out_dir, title)
    if notes:
        lines += [notes, ""]
    lines += _header(records, command)
    lines += [
        "Columns: accuracy on the held-out test split (never used for any choice), mean over seeds with "
        "its 95% confidence interval, a bootstrap over test examples and seeds (`results/stats.py`); rank = "
        "the ranks the variant may take in its task: every pair of variants compared paired on the same "
        "test examples (exact McNemar test for one seed each, paired bootstrap for several), Holm-corrected "
        "over all pairs at 5%; **bold accuracy: no other variant is significantly better**. Validation = the "
        "score after the last step on the validation split (what hyperparameters are chosen on); n = seeds; "
        "trainable params = parameters with requires_grad while training (for encoders this includes the "
        "classification head every method trains, shown as 'of which head'); stored = bytes of the saved "
        "artifact (bold: the smallest exact count); peak memory = " + memory_note(ok)
        + "; step time = median over training steps (first step excluded); tokens/s = unpadded input tokens "
        "trained on per second of training; MFU = estimated model FLOPs of training per second over the "
        "device's peak in the run's precision (" + peak_note(ok) + "; FLOPs counted from the model's linear "
        "layers and attention, weight gradients only for what trains: `engine/throughput.py`); switch = median task-switch "
        "latency when measured (see Task switching); forgetting (causal LMs) = the language-modelling loss on "
        "general English text with the run's adapter or weights minus the base model's, nats per token, "
        "positive = worse (24 fixed news articles, up to 128 tokens each: `engine/forgetting.py`). Time and memory have no interval here and are not "
        "ranked. **did not train**: a run whose loss did not fall by 5%, or whose validation accuracy never "
        "rose above the majority class by two standard errors (`results/aggregate.py: training_problem`).", ""]
    for task, model, title, spec in sections:
        names = spec.metrics if spec else ("accuracy",)
        rows = summary[summary["task"] == task] if not summary.empty else summary
        if model is not None:  # a task run on several models: one section (ranks, figures) per model
            rows = rows[rows["model"] == model]
        lines += [f"## {title}", ""]
        if spec:
            lines += [f"{spec.description.rstrip('.')}. {spec.answer_rule()}", ""]
        mine = [r for r in ok if r.run.task == task and model in (None, r.run.model)]  # this section's runs
        lines += [_data_line(mine), ""]
        lines += [table_from_summary(rows, names), ""]
        lines += _notes(rows, names[0])
        if figures and not rows.empty:
            # (alt text, or None for the grid's list of figures), drawn below, all together
            jobs.append((len(lines), [
                ("Pareto fronts: accuracy against trainable parameters and against peak training memory",
                 plots.pareto, (rows, names[0], out_dir, title)),
                ("Peak memory, training and evaluation", plots.memory_bars, (rows, out_dir, title)),
                ("Learning curves: training loss and validation score against step", plots.curves,
                 (rows, names[0], out_dir, title)),
                (None, plots.grid_plots, (rows, varying_keys(mine), names[0], out_dir, title))]))
            lines.append("")
    lines += [report_section(name, summary) for name in studies]
    if switch:
        lines.append(switch_tables(switch))
        if figures and not summary.empty:
            jobs.append((len(lines), [("Task-switch latency per method: median and 90th percentile, log scale", plots.switch_points,
                                       (summary, out_dir))]))
            lines.append("")
    lines.append(_failures(records))
    results = iter(plots.draw([(fn, args) for _, figs in jobs for _, fn, args in figs]))
    inserts = []
    for slot, figs in jobs:
        links = []
        for alt, _, _ in figs:
            result = next(results)
            if isinstance(result, plots.FigureFailed):
                print(f"peftbench: warning: a figure was not drawn: {result.error}", file=sys.stderr)
                links.append(f"_(a figure could not be drawn: {result.error})_")
                continue
            named = [(alt, result)] if alt is not None else [
                ("Grid: " + f.removesuffix(".png").replace("_", " "), f) for f in result]
            links += [f"![{a}]({f})" for a, f in named if f]
        inserts.append((slot, links))
    for slot, links in reversed(inserts):  # from the end: earlier slots keep their index
        lines[slot:slot] = links
    text = "\n".join(lines).rstrip() + "\n"
    return write_whole(out_dir / "README.md", lambda f: f.write_text(text))  # an earlier README stays if this fails
