"""``peftbench compare A B``: a markdown diff of two result sets (two package versions, two
machines, two commits), variant by variant, from ``peft_bench.results.aggregate.summarize``.

For every variant present in both, and every metric: A, B, the ratio B/A, and a flag when the
change is more than noise. Accuracy is compared paired on the test examples both scored
(``results.aggregate.compare_pair``): flagged when the difference is significant (95% CI and
p-value). Another metric (f1) and a resource (time, memory, throughput) are flagged when |B - A|
exceeds the larger of the two spreads (std over seeds); with one seed there is no spread, and the
row says so instead of guessing.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from peft_bench.results import stats
from peft_bench.results.aggregate import compare_pair, summarize
from peft_bench.results.units import fmt_bytes, fmt_count, fmt_s
from peft_bench.results.schema import Env, ResultRecord

# (summary column, title, formatter, spread column or None)
COMPARED = [
    ("trainable_params", "trainable params", fmt_count, None),
    ("stored_bytes", "stored", fmt_bytes, None),
    ("peak_mem_train_bytes", "peak train mem", fmt_bytes, "peak_mem_train_bytes_std"),
    ("peak_mem_eval_bytes", "peak eval mem", fmt_bytes, "peak_mem_eval_bytes_std"),
    ("train_time_s", "train time", fmt_s, "train_time_s_std"),
    ("step_time_median_s", "step time", fmt_s, "step_time_median_s_std"),
    ("eval_examples_per_s", "eval examples/s", lambda v: f"{v:.1f}", "eval_examples_per_s_std"),
]


def compare_rows(a: pd.DataFrame, b: pd.DataFrame) -> tuple[list[dict], list[str], list[str]]:
    """Rows of the diff table, and the variants only in A and only in B."""
    ia = {r["key"]: r for _, r in a.iterrows()} if not a.empty else {}
    ib = {r["key"]: r for _, r in b.iterrows()} if not b.empty else {}
    metrics = sorted({c[:-len("_spread")] for df in (a, b) for c in df.columns if c.endswith("_spread")})
    rows = []
    for key in sorted(set(ia) & set(ib), key=lambda k: tuple(map(str, k))):
        ra, rb = ia[key], ib[key]
        name = f"{ra['model']} / {ra['task']} / {ra['label']}"
        cols = [(m, m, lambda v: f"{v:.3f}", f"{m}_spread") for m in metrics] + COMPARED
        for col, title, fmt, spread_col in cols:
            va, vb = ra.get(col, math.nan), rb.get(col, math.nan)
            if va is None or vb is None or math.isnan(va) or math.isnan(vb):
                continue
            ratio = vb / va if va else math.nan
            diff = compare_pair(rb.get("correct"), ra.get("correct")) if col == "accuracy" else None
            if diff is not None:
                v = stats.verdict(diff)
                flag = (f"significant ({diff.value:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}], p = {diff.p_value:.2g})"
                        if v != stats.INCONCLUSIVE else f"no significant change (p = {diff.p_value:.2g})")
            elif spread_col is None:  # exact counts: any change is a change
                flag = "changed" if va != vb else ""
            else:
                margin = max(ra.get(spread_col, math.nan), rb.get(spread_col, math.nan))
                if math.isnan(margin):
                    flag = "spread unknown (1 seed)"
                else:
                    flag = f"beyond spread (±{fmt(margin)})" if abs(vb - va) > margin else ""
            rows.append({"variant": name, "metric": title, "A": fmt(va), "B": fmt(vb),
                         "B/A": "—" if math.isnan(ratio) else f"{ratio:.3f}", "flag": f"**{flag}**" if flag.startswith(("beyond", "changed", "significant")) else flag})
    only_a = [f"{k[0]} / {k[1]} / {ia[k]['label']}" for k in ia if k not in ib]
    only_b = [f"{k[0]} / {k[1]} / {ib[k]['label']}" for k in ib if k not in ia]
    return rows, only_a, only_b


def _env_line(records: list[ResultRecord]) -> str:
    env = next((r.env for r in records if r.env), Env())
    pk = (env.packages or {})
    return (f"{len(records)} runs; device {env.device} ({env.device_name}); commit "
            f"{str(env.git_commit)[:12]}; " + ", ".join(f"{k} {v}" for k, v in sorted(pk.items()) if v))


def _locks(records: list[ResultRecord]) -> set:
    return {(r.env.lock or {}).get("sha256") for r in records if r.env}


def _fmt_locks(locks: set) -> str:
    return ", ".join(f"`{x[:16]}`" if x else "none" for x in sorted(locks, key=str)) or "none"


def compare_markdown(a_records: list[ResultRecord], b_records: list[ResultRecord], a_name: str, b_name: str,
                     a_switch: list[dict] | None = None, b_switch: list[dict] | None = None) -> str:
    rows, only_a, only_b = compare_rows(summarize(a_records, a_switch), summarize(b_records, b_switch))
    flagged = sum(r["flag"].startswith("**") for r in rows)
    out = [f"# peft-bench comparison: B = {b_name} against A = {a_name}", "",
           f"- A: `{a_name}`: {_env_line(a_records)}", f"- B: `{b_name}`: {_env_line(b_records)}", "",
           "Per variant present in both, per metric: B/A. Accuracy is flagged when the paired difference on "
           "the test examples both scored is significant (95% CI, exact McNemar for one seed each, paired "
           "bootstrap for several); other figures where |B − A| exceeds the larger of the two spreads (std "
           "over seeds). A figure measured with one seed has no spread: its row says so.", "",
           f"{flagged} of {len(rows)} figures changed beyond noise.", ""]
    la, lb = _locks(a_records), _locks(b_records)
    if la != lb:
        out[3:3] = [f"**Different environments:** A was installed from lock(s) {_fmt_locks(la)}, B from "
                    f"{_fmt_locks(lb)}: differences may come from package versions, not from the code.", ""]
    if rows:
        out.append(tabulate(pd.DataFrame(rows), headers="keys", tablefmt="github", showindex=False,
                            disable_numparse=True))
    else:
        out.append("_no variant ran in both result sets_")
    for title, names in (("Only in A", only_a), ("Only in B", only_b)):
        if names:
            out += ["", f"## {title}", ""] + [f"- {n}" for n in names]
    return "\n".join(out) + "\n"


def load(path: Path) -> tuple[list[ResultRecord], list[dict], Path]:
    from peft_bench.results.store import read_json_lines, read_records, store_file

    f = store_file(path, "a result set")
    sw = f.parent / "switch.jsonl"
    return read_records(f), (read_json_lines(sw) if sw.exists() else []), f
