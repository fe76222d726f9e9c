"""The headline at the top of a report: per section (task, model), which variant wins on each axis,
with the variants it cannot be told apart from named with it; one leaderboard across sections;
and the best score within a budget.

Everything comes from ``aggregate.summarize``: accuracy ties are the variants no other variant is
significantly better than (rank band starting at 1, Holm-corrected paired tests); the resource
axes carry no interval, so their ties are the values that print the same.
"""

from __future__ import annotations

import math

import pandas as pd
from tabulate import tabulate

from peft_bench.results.units import fmt_bytes, fmt_count, fmt_ms, fmt_s

# (row title, summary column, format): the resource axes, lower is better
AXES = [
    ("fewest trainable params", "trainable_params", fmt_count),
    ("smallest stored", "stored_bytes", fmt_bytes),
    ("lowest peak train memory", "peak_mem_train_bytes", fmt_bytes),
    ("fastest training", "train_time_s", fmt_s),
    ("fastest warm switch", "warm_switch_s", fmt_ms),
]
MAX_NAMED = 4  # a tie of more variants names this many, then "+N more"
STORED_BUDGET = 1_000_000  # bytes: "the best within 1 MB stored"


def _names(labels: list[str]) -> str:
    more = len(labels) - MAX_NAMED
    return ", ".join(labels[:MAX_NAMED]) + (f" +{more} more" if more > 0 else "")


def _score(row: pd.Series, metric: str) -> str:
    lo, hi = row.get(f"{metric}_low", math.nan), row.get(f"{metric}_high", math.nan)
    ci = f" [{lo:.3f}, {hi:.3f}]" if not (pd.isna(lo) or pd.isna(hi)) else ""
    return f"{row[metric]:.3f}{ci}"


def _trained(rows: pd.DataFrame) -> pd.DataFrame:
    """The variants the resource axes compare: they trained something, and trained (not flagged)."""
    keep = rows["trainable_params"].fillna(0) > 0
    if "did_not_train" in rows:
        keep &= ~rows["did_not_train"].astype(bool)
    return rows[keep]


def _best_metric(rows: pd.DataFrame, metric: str) -> str:
    rows = rows[rows[metric].notna()]
    if rows.empty:
        return "—"
    top = rows.sort_values(metric, ascending=False)
    best = top.iloc[0]
    tied = [r["label"] for _, r in top.iloc[1:].iterrows() if r.get("rank_low") == 1]
    text = f"{best['label']} {_score(best, metric)}"
    return text + (f"; not significantly worse: {_names(tied)}" if tied else "")


def _best_low(rows: pd.DataFrame, col: str, fmt) -> str:
    flagged = bool((rows["trainable_params"].fillna(0) > 0).any())
    rows = _trained(rows)
    rows = rows[rows[col].notna()] if col in rows else rows.iloc[0:0]
    if rows.empty:
        return "— (every variant that trains was flagged: did not train)" if flagged and col != "warm_switch_s" else "—"
    shown = rows[col].map(fmt)
    best = fmt(rows[col].min())
    return f"{_names(list(rows.loc[shown == best, 'label']))} ({best})"


def _within(rows: pd.DataFrame, metric: str, mask: pd.Series, what: str) -> str:
    rows = rows[mask & rows[metric].notna()]
    if rows.empty:
        return f"none {what}"
    best = rows.sort_values(metric, ascending=False).iloc[0]
    return f"{best['label']} {_score(best, metric)}"


def headline(summary: pd.DataFrame, sections: list[tuple[str, str | None, str, str]]) -> list[str]:
    """Markdown lines: the winners table (a column per section), the budget table and the
    leaderboard across sections. ``sections``: (task, model or None, title, main metric)."""
    if summary.empty or not sections:
        return []
    parts = []
    for task, model, title, metric in sections:
        rows = summary[summary["task"] == task]
        if model is not None:
            rows = rows[rows["model"] == model]
        if not rows.empty and metric in rows:
            parts.append((title, metric, rows))
    if not parts:
        return []
    winners = {"": [f"best {parts[0][1]} (95% CI)" if len({m for _, m, _ in parts}) == 1 else "best score (95% CI)"]
               + [a for a, _, _ in AXES]}
    budgets: dict[str, list[str]] = {"": []}
    for title, metric, rows in parts:
        winners[title] = [_best_metric(rows, metric)] + [_best_low(rows, col, fmt) for _, col, fmt in AXES]
        trained = _trained(rows)
        budgets[title] = [
            _within(rows, metric, rows["stored_bytes"].fillna(math.inf) <= STORED_BUDGET, "stores ≤ 1 MB"),
            _within(trained, metric, trained["peak_mem_train_bytes"] <= trained["peak_mem_train_bytes"].median(), ""),
            _within(trained, metric, trained["train_time_s"] <= trained["train_time_s"].median(), ""),
        ]
    table = pd.DataFrame(winners)
    table = table[table.iloc[:, 1:].ne("—").any(axis=1)]  # an axis nothing was measured on is left out
    lines = ["## Headline", "",
             tabulate(table, headers="keys", tablefmt="github", showindex=False, disable_numparse=True), ""]
    lines += ["**Best within a budget** (1 MB stored; the median peak train memory; the median train time): "
              + "; ".join(f"{title}: " + (", ".join(f"{b} {c}" for b, c in zip(("1 MB:", "memory:", "time:"), cells))
                                            if len(set(cells)) > 1 else f"{cells[0]} (all three)")
                          for title, cells in list(budgets.items())[1:]) + ".", ""]
    board = leaderboard([rows for _, _, rows in parts])
    if board:
        lines += [board, ""]
    lines += ["Ties: accuracy names every variant no other is significantly better than (paired tests, "
              "Holm); time and memory have no interval, so only equal printed values tie. Resource winners "
              "are among the variants that trained something and passed the did-not-train check; the "
              "median budgets are this section's trained variants' medians.", ""]
    return lines


def leaderboard(sections: list[pd.DataFrame]) -> str:
    """Across sections: each variant's mean rank band (mean of its lowest and highest possible ranks)
    over the sections it ran in, best first; '' with fewer than two sections."""
    if len(sections) < 2:
        return ""
    bands: dict[str, list[tuple[float, float]]] = {}
    for rows in sections:
        for _, r in rows.iterrows():
            if not pd.isna(r.get("rank_low")) and r.get("rank_low"):
                bands.setdefault(r["label"], []).append((r["rank_low"], r["rank_high"]))
    full = {k: v for k, v in bands.items() if len(v) == len(sections)}
    if not full:
        return ""
    order = sorted(full, key=lambda k: (sum(lo + hi for lo, hi in full[k]), k))
    cells = [f"{k} {sum(lo for lo, _ in full[k]) / len(full[k]):.1f}–{sum(hi for _, hi in full[k]) / len(full[k]):.1f}"
             for k in order[:8]]
    return (f"**Across the {len(sections)} sections** (mean rank band: the mean over sections of the lowest and "
            f"highest rank each variant may take; variants in every section): " + "; ".join(cells)
            + (f"; +{len(order) - 8} more" if len(order) > 8 else "") + ".")
