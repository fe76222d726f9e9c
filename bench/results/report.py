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
import os
import sys
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from peft_bench.results.aggregate import summarize, varying_keys
from peft_bench.results.serving_tables import switch_tables
from peft_bench.results.store import ResultRecord
from peft_bench.results.units import fmt_bytes, fmt_count, fmt_flops, fmt_ms, fmt_s


MEMORY_KINDS = {
    "cpu_rss_peak": "the kernel's peak RSS (VmHWM, reset at the start of each window) above one baseline: "
                    "the prepared model with every base weight resident",
    "cpu_rss_sampled": "peak RSS, sampled every 5 ms, above one baseline: the prepared model with every base "
                       "weight resident",
    "cuda_allocated": "torch.cuda.max_memory_allocated above one baseline: the prepared model on the device "
                      "(reserved memory is in the records too)",
}


def memory_note(records: list[ResultRecord]) -> str:
    """What the peak-memory columns of these records measure. Records made before the one-baseline
    change (no ``mem_baseline_bytes``) measured above a post-load RSS that held only part of the
    memory-mapped base weights: they say so, and are not comparable with later ones."""
    kind = records[0].resources.peak_mem_kind if records else None
    old = [r for r in records if r.resources.mem_baseline_bytes is None]
    if not old:
        return MEMORY_KINDS.get(kind, str(kind))
    return (f"peak RSS ({kind}) above the RSS right after loading, which held only part of the memory-mapped "
            f"base weights ({len(old)} of {len(records)} runs recorded before the one-baseline measurement: "
            "their memory figures hold a method-dependent share of the base weights and are not comparable "
            "with later reports)")


def peak_note(records: list[ResultRecord]) -> str:
    """Where the MFU columns' peaks come from (each distinct source once)."""
    peaks = sorted({(r.resources.peak_flops_source, r.resources.peak_flops_per_s) for r in records
                    if r.resources.peak_flops_source and r.resources.peak_flops_per_s})
    if not peaks:
        return "not recorded by these runs"
    return "peak: " + "; ".join(f"{source} = {fmt_flops(p)}" for source, p in peaks)


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
    cols: list[tuple] = [(f"{m} ↑" + (" [95% CI]" if m == "accuracy" else ""), m, None,
                          "rank" if m == "accuracy" else None) for m in metric_names]
    cols += [
        ("rank", "rank_low", None, None),
        (f"validation {metric_names[0]}", f"val_{metric_names[0]}", lambda v: f"{v:.3f}", None),
        ("n", "n", lambda v: f"{int(v)}", None),
        ("trainable params ↓", "trainable_params", fmt_count, "min"),
        ("% of total", "pct_trainable", lambda v: f"{v:.3f}%", None),
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
    cols = _columns(metric_names, with_switch=bool(summary["warm_switch_s"].notna().any()),
                    with_forgetting=bool(summary["forgetting"].notna().any()))
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
    base = summary["majority_accuracy"].dropna()
    if len(base):
        row = {k: "—" for k in rows[0]}
        row.update({"method": "majority class (baseline)", "accuracy ↑ [95% CI]": f"{base.iloc[0]:.3f}"})
        rows.append(row)
    return tabulate(pd.DataFrame(rows), headers="keys", tablefmt="github", showindex=False, disable_numparse=True)


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
        out += [tabulate(pd.DataFrame(table), headers="keys", tablefmt="github", showindex=False,
                         disable_numparse=True), ""]
    return out


def _fmt_wall(s: float | None) -> str:
    return "unknown" if s is None else f"{s:.0f} s ({s / 60:.1f} min)"


def _failures(records: list[ResultRecord]) -> str:
    bad = [r for r in records if r.status != "ok"]
    if not bad:
        return ""
    lines = ["## Runs that did not finish", ""]
    for r in bad:
        first = (r.error or "").strip().splitlines()[-1:] or [""]
        lines.append(f"- `{r.run.run_id}`: **{r.status}** — {first[0]}")
    return "\n".join(lines) + "\n"


def wall_time_s(records: list[ResultRecord]) -> float | None:
    """From the first run's start to the last run's end (the suite's wall time if run at once)."""
    from datetime import datetime

    stamps = [(r.run.started_at, r.run.finished_at) for r in records]
    try:
        starts = [datetime.strptime(a, "%Y-%m-%dT%H:%M:%S%z") for a, _ in stamps if a]
        ends = [datetime.strptime(b, "%Y-%m-%dT%H:%M:%S%z") for _, b in stamps if b]
    except (TypeError, ValueError):
        return None
    return (max(ends) - min(starts)).total_seconds() if starts and ends else None


def _header(records: list[ResultRecord], command: str) -> list[str]:
    ok = [r for r in records if r.status == "ok"]
    ref = ok[0] if ok else (records[0] if records else None)
    if ref is None or not ref.env:
        return []
    env, tr = ref.env, ref.run.train or {}
    pk = (env.packages or {})
    n_test = sorted({(r.run.task, r.run.n_test) for r in ok})
    return [
        "| setting | value |", "|---|---|",
        f"| suite | {', '.join(sorted({str(r.run.suite) for r in records}))} |",
        f"| models | {', '.join(sorted({r.run.model for r in records}))} |",
        f"| device | {env.device} ({env.device_name}), {env.torch_threads} torch threads, "
        f"{env.cpu_count} CPUs |",
        f"| training | {tr.get('steps')} steps × batch {tr.get('batch_size')}, AdamW, linear warm-up "
        f"{tr.get('warmup_ratio')} then decay, head lr {tr.get('head_lr')}, max length {tr.get('max_length')}, "
        f"mixed precision {tr.get('mixed_precision')} |",
        f"| data | up to {tr.get('n_train')} training examples per task; validation examples: "
        + (", ".join(f"{t} {n}" for t, n in sorted({(r.run.task, r.run.n_validation) for r in ok}))
           if any(r.run.n_validation for r in ok) else "none")
        + f" ({tr.get('eval_points', 0)} evaluation points); test examples: "
        + ", ".join(f"{t} {n}" for t, n in n_test) + " |",
        f"| hyperparameters | {_selection(ok)} |",
        f"| seeds | {', '.join(map(str, sorted({(r.run.train or {}).get('seed') for r in records})))} |",
        f"| runs | {len(records)} ({len(ok)} ok); {_fmt_wall(wall_time_s(records))} from the first run's start to the "
        f"last run's end; the runs' own wall times sum to "
        f"{_fmt_wall(sum(r.resources.run_wall_s or 0.0 for r in records))} |",
        "| packages | " + ", ".join(f"{k} {v}" for k, v in pk.items() if v) + f", python {env.python} |",
        f"| lock | {lock_summary(records)} |",
        f"| commit | {env.git_commit}{' (dirty)' if env.git_dirty else ''} |",
        f"| reproduce | `{command}` |", "",
    ]


def _selection(records: list[ResultRecord]) -> str:
    """How each method's configuration was chosen (``run.search``)."""
    searched = sorted({r.run.method for r in records if r.run.search})
    by_hand = sorted({r.run.method for r in records if not r.run.search})
    parts = []
    if searched:
        parts.append("chosen on validation (`[search]`, below each table) for " + ", ".join(searched))
    if by_hand:
        parts.append("set by hand (the suite's values or the methods' defaults; no search) for " + ", ".join(by_hand))
    return "; ".join(parts) or "—"


def lock_summary(records: list[ResultRecord]) -> str:
    """Which lock file(s) the records' environments were installed from, and whether they matched."""
    locks: dict[str | None, list[ResultRecord]] = {}
    for r in records:
        if r.env:
            locks.setdefault((r.env.lock or {}).get("sha256"), []).append(r)
    parts = []
    for sha, recs in locks.items():
        if sha is None:
            parts.append(f"{len(recs)} run(s) with no lock file (environment not pinned)")
            continue
        bad = {k: v for r in recs for k, v in ((r.env.lock or {}).get("mismatches") or {}).items()}
        state = ("installed packages match it" if not bad else "installed packages differ: "
                 + ", ".join(f"{k} {v.get('installed')} (locked {v.get('locked')})" for k, v in sorted(bad.items())))
        parts.append(f"`requirements.lock` sha256 `{sha[:16]}`: {len(recs)} run(s), {state}")
    return ("**several locks:** " if len(locks) > 1 else "") + "; ".join(parts) if parts else "unknown"


def write_report(records: list[ResultRecord], out_dir: Path, title: str, command: str,
                 notes: str = "", switch: list[dict] | None = None, figures: bool = True,
                 studies: tuple[str, ...] | list[str] = ()) -> Path:
    """Write ``out_dir/README.md`` and its PNG figures; everything in them comes from ``records``
    (and the ``switch`` measurements). ``studies``: the sections of the studies the suite opts
    into (``peft_bench.studies``), after the tables."""
    from peft_bench.studies import report_section

    from peft_bench.results import plots
    from peft_bench.core.registry import TASKS, load_builtin_plugins

    load_builtin_plugins()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [p for pat in plots.FIGURE_PATTERNS for p in out_dir.glob(pat) if p.is_file()]:
        old.unlink()  # figures of an earlier report of this folder that this one may not redraw
    ok = [r for r in records if r.status == "ok"]
    summary = summarize(records, switch)
    varying = varying_keys(ok)
    lines = [f"# {title}", ""]
    jobs: list[tuple[int, list]] = []  # (where in `lines` their links go, figures)
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
    for task in sorted({r.run.task for r in records}):
        spec = TASKS.get(task) if task in TASKS else None
        names = spec.metrics if spec else ("accuracy",)
        rows = summary[summary["task"] == task] if not summary.empty else summary
        lines += [f"## {task}", ""]
        if spec:
            lines += [f"{spec.description}. Label words: {', '.join(spec.label_words)}.", ""]
        lines += [table_from_summary(rows, names), ""]
        lines += _notes(rows, names[0])
        if figures and not rows.empty:
            # (alt text, or None for the grid's list of figures), drawn below, all together
            jobs.append((len(lines), [
                ("Pareto fronts: accuracy against trainable parameters and against peak training memory",
                 plots.pareto, (rows, names[0], out_dir, task)),
                ("Peak memory, training and evaluation", plots.memory_bars, (rows, out_dir, task)),
                ("Learning curves: training loss and validation score against step", plots.curves,
                 (rows, names[0], out_dir, task)),
                (None, plots.grid_plots, (rows, varying, names[0], out_dir, task))]))
            lines.append("")
    lines += [report_section(name, summary) for name in studies]
    if switch:
        lines.append(switch_tables(switch))
        if figures and not summary.empty:
            jobs.append((len(lines), [("Task-switch latency per method, log scale", plots.switch_bars,
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
    path = out_dir / "README.md"
    tmp = out_dir / f".README.md.{os.getpid()}"
    try:  # whole or not at all: an earlier README stays as it was if this write fails
        tmp.write_text("\n".join(lines).rstrip() + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
