"""Report figures (PNG, matplotlib without a display), drawn from ``peft_bench.results.aggregate.summarize``.

Each function takes the summary rows of one task (or the switch rows), writes one PNG into the
report folder and returns its file name, or None when there is nothing to draw. Error bars on
accuracy are its 95% confidence interval over test examples and seeds (``results.stats``); where a
variant has no per-example predictions, the spread of ``results.aggregate.spread`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import math
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from peft_bench.results.aggregate import natural_key, pareto_front  # noqa: E402

DPI = 110
FIGURE_PATTERNS = ("pareto_*.png", "memory_*.png", "grid_*.png", "curves_*.png", "switch.png")  # what a report draws
MIB = 2**20
PHASE_COLOURS = {"training": "0.3", "evaluation": "0.65"}  # greys: never a method's colour


# the built-in methods' colours, the same in every figure of every report; the other methods take one
# of the remaining tab20 colours by a hash of their name (stable across reports, reruns and machines).
# Greys are left for what is not a method (other variants, the Pareto front, memory's two phases).
FIXED_COLOURS = {"prompt_tuning": "#1f77b4", "prefix_tuning": "#ff7f0e", "p_tuning": "#2ca02c", "lora": "#d62728",
                 "bottleneck_adapter": "#9467bd", "full_finetune": "#8c564b", "zero_shot": "#17becf"}
_OTHER_COLOURS = ("#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d",
                  "#9edae5", "#e377c2", "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">"]


def shades(colour: str, n: int) -> list[tuple]:
    """``n`` shades of a method's colour for its variants: the colour itself, then lighter."""
    from matplotlib.colors import to_rgb

    rgb = to_rgb(colour)
    return [tuple(c + (1 - c) * 0.55 * i / max(n - 1, 1) for c in rgb) for i in range(n)]


def method_colour(method: str) -> str:
    """The colour of ``method`` in every figure of every report."""
    if method in FIXED_COLOURS:
        return FIXED_COLOURS[method]
    return _OTHER_COLOURS[zlib.crc32(method.encode()) % len(_OTHER_COLOURS)]


def method_colours(methods) -> dict[str, str]:
    """``method_colour`` of each method (one colour per method, whatever else the report holds)."""
    return {m: method_colour(m) for m in set(methods)}


def warm_up() -> None:
    """Draw a small throwaway figure with the elements of the report's (log axis, error bars,
    legend, title): it fills matplotlib's font and text-layout caches. ``peftbench run`` calls it
    while its run server is still importing torch & co (an otherwise idle core), so the report at
    the end of the suite does not pay for it (~0.4 s here: ``peftbench bench-overhead --suite``)."""
    import io

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.errorbar([1, 10], [0.5, 0.6], yerr=[0.1, 0.1], fmt="o", capsize=3, label="warm-up")
    ax.set_xscale("log")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("warm-up", fontsize=10)
    fig.tight_layout()
    fig.savefig(io.BytesIO(), format="png", dpi=DPI)
    plt.close(fig)


DRAW_TIMEOUT_S = 120.0  # per report: past it, workers are killed and the figures drawn in-process


@dataclass
class FigureFailed:
    """A figure that could not be drawn or written (the report says so and goes on)."""

    error: str


def _call(job: tuple) -> object:
    fn, args = job
    return fn(*args)


def _call_here(job: tuple) -> object:
    """A job drawn in this process: its failure is a ``FigureFailed``, not the report's end."""
    try:
        return _call(job)
    except Exception as e:  # noqa: BLE001 - e.g. a full disk: the markdown is still written
        plt.close("all")
        return FigureFailed(f"{getattr(job[0], '__name__', job[0])}: {type(e).__name__}: {e}")


def draw(jobs: list[tuple]) -> list:
    """Run figure jobs ``(plot function, args)`` and return their results in order.

    Drawing (layout and rasterising: text measurement, tick labels) is the whole cost of a report,
    ~0.35 s a figure here, and figures are independent: with several figures and cores they are
    drawn by forked workers, which inherit this process's loaded matplotlib and fonts. Linux only
    (fork); the workers run matplotlib and pandas only, never torch. If a worker dies or the jobs
    run past ``DRAW_TIMEOUT_S`` the workers are killed and every figure is drawn here instead; a
    figure that fails here too comes back as a ``FigureFailed`` (the report names it)."""
    import multiprocessing as mp
    import os
    import sys

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if len(jobs) < 2 or cores < 2 or not sys.platform.startswith("linux"):
        return [_call_here(job) for job in jobs]
    pool = mp.get_context("fork").Pool(min(len(jobs), cores))
    try:
        return pool.map_async(_call, jobs, chunksize=1).get(DRAW_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - a worker failed or hung: the figures are still drawn, here
        pool.terminate()
        return [_call_here(job) for job in jobs]
    finally:
        pool.terminate()
        pool.join()


def _save(fig, out_dir: Path, name: str, rect=(0, 0, 1, 1)) -> str:
    fig.tight_layout(rect=rect)
    fig.savefig(Path(out_dir) / name, dpi=DPI)
    plt.close(fig)
    return name


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _err(rows, metric: str) -> list[list[float]]:
    """Asymmetric error bars (below, above) of ``metric`` for summary rows: the 95% interval where
    there is one (accuracy with predictions), else the spread."""
    lo, hi = [], []
    for r in (rows.to_dict("records") if isinstance(rows, pd.DataFrame) else rows):
        v, a, b = r[metric], r.get(f"{metric}_low", math.nan), r.get(f"{metric}_high", math.nan)
        if not (math.isnan(a) or math.isnan(b)):
            lo.append(v - a)
            hi.append(b - v)
        else:
            sp = r.get(f"{metric}_spread", math.nan)
            lo.append(0.0 if math.isnan(sp) else sp)
            hi.append(0.0 if math.isnan(sp) else sp)
    return [lo, hi]


def curves(summary: pd.DataFrame, metric: str, out_dir: Path, task: str) -> str | None:
    """Learning curves: training loss against step, and validation ``metric`` at each evaluation
    point, one line per variant (mean over its seeds), the majority class as a dotted line."""
    d = summary[summary["loss_curve"].map(bool) | summary["val_curve"].map(bool)]
    if d.empty:
        return None
    colours = method_colours(summary["method"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = ["-", "--", ":", "-."]
    seen: dict[str, int] = {}
    named = set(d["label"])
    if d["method"].nunique() > MANY_METHODS:  # too many lines to tell apart: the best few named, the rest grey
        last = {r["label"]: r["val_curve"][-1][1] for _, r in d.iterrows() if r["val_curve"]}
        named = set(sorted(last, key=last.get, reverse=True)[:CURVES_NAMED])
    for _, r in d.sort_values("label", key=lambda c: c.isin(named), kind="stable").iterrows():  # the named drawn on top
        k = seen[r["method"]] = seen.get(r["method"], -1) + 1
        kw = dict(color=colours[r["method"]], linestyle=styles[k % len(styles)], label=r["label"])
        if r["label"] not in named:
            kw = dict(color="0.8", linewidth=0.8, label=f"the other {len(d) - len(named)} (grey)")
        if r["loss_curve"]:
            ax1.plot(*zip(*r["loss_curve"]), **kw)
        if r["val_curve"]:
            ax2.plot(*zip(*r["val_curve"]), marker="o", markersize=4, **kw)
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (window mean)")
    ax2.set_xlabel("step")
    ax2.set_ylabel(f"validation {metric}")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    unique = dict(zip(*reversed(ax1.get_legend_handles_labels() if ax1.lines else ax2.get_legend_handles_labels())))
    labels, handles = list(unique), list(unique.values())
    ncol = min(len(labels), 4 if max(map(len, labels), default=0) <= 40 else 2)  # long labels: fewer columns, all legible
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.suptitle(f"{task}: learning curves (mean over seeds)" + (
        f"; named: the {len(named)} best on validation at the last step" if len(named) < len(d) else ""), fontsize=10)
    rows = -(-len(labels) // ncol)
    return _save(fig, out_dir, f"curves_{_safe(task)}.png", rect=(0, 0.05 * rows + 0.02, 1, 1))


def pareto(summary: pd.DataFrame, metric: str, out_dir: Path, task: str) -> str | None:
    """Accuracy against trainable parameters (log x) and against peak training memory, the
    Pareto frontier (fewer parameters / less memory, higher accuracy) drawn as a dashed line."""
    if summary.empty or summary[metric].isna().all():
        return None
    colours = method_colours(summary["method"])
    axes_spec = [("trainable_params", "trainable parameters (log scale)", True, 1.0),
                 ("peak_mem_train_bytes", "peak training memory above the prepared model (MiB)", False, MIB)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, (col, xlabel, logx, scale) in zip(axes, axes_spec):
        d = summary[summary[col].notna() & summary[metric].notna()]
        if logx:
            d = d[d[col] > 0]  # nothing trained (a zero-shot baseline) has no place on a log axis
        if d.empty:
            ax.set_visible(False)
            continue
        x, y = d[col] / scale, d[metric]
        front = pareto_front(list(x), list(y))
        if d["method"].nunique() > MANY_METHODS:  # too many for a legend: the front named, the rest grey
            _front_named(ax, d, col, scale, metric, front, colours)
        else:
            for method, part in d.groupby("method"):  # variants of a method: shades and markers, named in the legend
                for (_, r), shade, marker in zip(part.iterrows(), shades(colours[method], len(part)), MARKERS * 4):
                    ax.errorbar([r[col] / scale], [r[metric]], yerr=_err([r.to_dict()], metric), fmt=marker,
                                capsize=3, color=shade, label=r["label"], markersize=7)
        fx, fy = zip(*sorted((a, b) for a, b, f in zip(x, y, front) if f))
        ax.step(fx, fy, where="post", linestyle="--", color="grey", linewidth=1, label="Pareto front")
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    legend: dict = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(lab, h)
    if not legend:  # nothing to place on either axis (e.g. only an untrained baseline)
        plt.close(fig)
        return None
    ncol = min(len(legend), 7 if max(map(len, legend)) <= 24 else 3 if max(map(len, legend)) <= 45 else 2)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(f"{task}: {metric} against cost (error bars: 95% CI; dashed: Pareto front)", fontsize=10)
    rows = -(-len(legend) // ncol)
    return _save(fig, out_dir, f"pareto_{_safe(task)}.png", rect=(0, 0.045 * rows + 0.03, 1, 1))


MANY_METHODS = 10  # above this many methods a figure names a few variants (in colour) and greys the rest
CURVES_NAMED = 6


def _front_named(ax, d: pd.DataFrame, col: str, scale: float, metric: str, front: list[bool], colours) -> None:
    """The variants on the front in their method's colour, named beside their points (alternately
    above and below, left to right, so that neighbours' names do not meet); the others grey."""
    on = d[front]
    off = d[[not f for f in front]]
    ax.errorbar(off[col] / scale, off[metric], yerr=_err(off, metric), fmt="o", capsize=2, color="0.72",
                markersize=5, label="not on the front (grey)", zorder=1)
    on = on.assign(_x=on[col] / scale).sort_values("_x")
    for i, (_, r) in enumerate(on.iterrows()):
        ax.errorbar([r["_x"]], [r[metric]], yerr=_err([r.to_dict()], metric), fmt="o", capsize=3,
                    color=colours[r["method"]], markersize=7, zorder=3)
        ax.annotate(r["label"], (r["_x"], r[metric]), fontsize=7, zorder=4, xytext=(5, 8 if i % 2 == 0 else -12),
                    textcoords="offset points", color=colours[r["method"]])


def memory_bars(summary: pd.DataFrame, out_dir: Path, task: str) -> str | None:
    """Peak memory while training and while evaluating, per variant."""
    d = summary[summary["peak_mem_train_bytes"].notna() | summary["peak_mem_eval_bytes"].notna()]
    if d.empty:
        return None
    if len(d) > MANY_METHODS:
        return _memory_rows(d, out_dir, task)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(d) + 2), 4))
    pos = range(len(d))
    w = 0.38
    ax.bar([p - w / 2 for p in pos], d["peak_mem_train_bytes"] / MIB, w, yerr=d["peak_mem_train_bytes_std"].fillna(0) / MIB,
           capsize=2, label="training", color=PHASE_COLOURS["training"])
    ax.bar([p + w / 2 for p in pos], d["peak_mem_eval_bytes"] / MIB, w, yerr=d["peak_mem_eval_bytes_std"].fillna(0) / MIB,
           capsize=2, label="evaluation", color=PHASE_COLOURS["evaluation"])
    ax.set_xticks(list(pos), list(d["label"]), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("peak memory above the prepared model (MiB)")
    ax.set_title(f"{task}: peak memory", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_dir, f"memory_{_safe(task)}.png")


def _memory_rows(d: pd.DataFrame, out_dir: Path, task: str) -> str:
    """Many variants: one row each, sorted by peak training memory, names legible on the y-axis."""
    d = d.sort_values("peak_mem_train_bytes", ascending=False)
    fig, ax = plt.subplots(figsize=(8, 0.22 * len(d) + 1.4))
    pos = range(len(d))
    h = 0.4
    ax.barh([p - h / 2 for p in pos], d["peak_mem_train_bytes"] / MIB, h, label="training", color=PHASE_COLOURS["training"])
    ax.barh([p + h / 2 for p in pos], d["peak_mem_eval_bytes"] / MIB, h, label="evaluation", color=PHASE_COLOURS["evaluation"])
    ax.set_yticks(list(pos), list(d["label"]), fontsize=7)
    ax.set_ylim(len(d) - 0.5, -0.5)
    ax.set_xlabel("peak memory above the prepared model (MiB)")
    ax.set_title(f"{task}: peak memory (one seed each, no spread)" if (d["n"] == 1).all() else f"{task}: peak memory",
                 fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out_dir, f"memory_{_safe(task)}.png")


def switch_points(summary: pd.DataFrame, out_dir: Path) -> str | None:
    """Task-switch latency per method on a log scale, as points (a bar's length means nothing on a
    log axis): the median, a whisker up to the 90th percentile; warm and cold switch, and the
    forward alone beside them."""
    d = summary[summary["warm_switch_s"].notna()].drop_duplicates(["model", "method", "label"])
    if d.empty:
        return None
    cols = [("warm_switch_s", "warm switch (activate)", "o"), ("cold_switch_s", "cold switch (load + activate)", "s"),
            ("forward_s", "forward alone (beside, not inside)", "^")]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(d) + 2), 4.4))
    for i, (col, name, marker) in enumerate(cols):
        x = [p + (i - 1) * 0.22 for p in range(len(d))]
        med = d[col] * 1e3
        p90 = d.get(col.removesuffix("_s") + "_p90_s", pd.Series([math.nan] * len(d), index=d.index)) * 1e3
        up = [max(0.0, b - a) if not math.isnan(b) else 0.0 for a, b in zip(med, p90)]
        ax.errorbar(x, med, yerr=[[0.0] * len(d), up], fmt=marker, capsize=3, markersize=6,
                    color=PHASE_COLOURS["training"] if i == 0 else PHASE_COLOURS["evaluation"] if i == 1 else "0.0",
                    mfc="white" if i == 2 else None, label=name)
    ax.set_yscale("log")
    ax.set_xticks(list(range(len(d))), [f"{r.label}\n({r.model})" for r in d.itertuples()], rotation=20,
                  ha="right", fontsize=8)
    for tick, method in zip(ax.get_xticklabels(), d["method"]):
        tick.set_color(method_colour(method))
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title("task switching: median, whisker to the 90th percentile", fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3, which="both")
    return _save(fig, out_dir, "switch.png", rect=(0, 0.07, 1, 1))


def grid_plots(summary: pd.DataFrame, varying: dict[str, list[str]], metric: str, out_dir: Path,
               task: str) -> list[str]:
    """For each grid axis of each method: the metric against that axis, one series per setting of
    the method's other varying fields (a series needs two points). Numeric axes are lines (log x
    when they span 20x or more), others points at each category; error bars are the spread."""
    names = []
    for method, keys in sorted(varying.items()):
        rows = summary[summary["method"] == method]
        for axis in keys:
            others = [k for k in keys if k != axis]
            series: dict[tuple, list] = {}
            for _, r in rows.iterrows():
                series.setdefault(tuple(repr(r["config"].get(k)) for k in others), []).append(r)
            series = {k: v for k, v in series.items() if len(v) > 1}
            if not series:
                continue
            numeric = all(isinstance(r["config"].get(axis), (int, float)) for v in series.values() for r in v)
            fig, ax = plt.subplots(figsize=(6, 4))
            for i, (other, pts) in enumerate(sorted(series.items())):
                name = ", ".join(f"{k}={v.strip(chr(39))}" for k, v in zip(others, other)) or method
                pts = sorted(pts, key=lambda r: natural_key(str(r["config"].get(axis))))
                y = [r[metric] for r in pts]
                err = _err([dict(r) for r in pts], metric)
                if numeric:
                    ax.errorbar([r["config"][axis] for r in pts], y, yerr=err, marker="o", capsize=3, label=name)
                else:
                    # points, not bars: the y axis starts near the scores, and a bar's length would mislead
                    w = 0.6 / len(series)
                    ax.errorbar([j + (i - (len(series) - 1) / 2) * w for j in range(len(pts))], y, yerr=err, fmt="o",
                                capsize=3, label=name)
                    ax.set_xticks(range(len(pts)), [str(r["config"].get(axis)) for r in pts])
            if numeric:
                xs = [r["config"][axis] for v in series.values() for r in v]
                if min(xs) > 0 and max(xs) / min(xs) >= 20:
                    ax.set_xscale("log")
            else:
                lo = min(r[metric] - 3 * (r[f"{metric}_spread"] or 0) for v in series.values() for r in v)
                ax.set_ylim(bottom=max(0.0, lo if not math.isnan(lo) else 0.0))
            base = summary["majority_accuracy"].dropna()
            if len(base) and metric == "accuracy":
                lo_y, hi_y = ax.get_ylim()
                if lo_y <= base.iloc[0] <= hi_y:  # a line off the axis gets no legend entry: it says so instead
                    ax.axhline(base.iloc[0], color="grey", linestyle=":", label="majority class")
                    ax.set_ylim(lo_y, hi_y)
                else:
                    ax.text(0.99, 0.02, f"majority class {base.iloc[0]:.3f}: below the axis", transform=ax.transAxes,
                            ha="right", va="bottom", fontsize=8, color="grey")
            ax.set_xlabel(axis)
            ax.set_ylabel(metric)
            ax.set_title(f"{task}: {method}, {metric} by {axis}", fontsize=10)
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
            names.append(_save(fig, out_dir, f"grid_{_safe(task)}_{_safe(method)}_{_safe(axis)}.png"))
    return names
