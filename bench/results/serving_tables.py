"""The report's task-switching and serving-throughput tables, from ``switch.jsonl`` measurements
(``serving.switching``): the latest measurement of each group of runs."""

from __future__ import annotations

import statistics

import pandas as pd
from peft_bench.results.tables import md_table

from peft_bench.results.aggregate import latest_switch
from peft_bench.results.units import fmt_ms, fmt_bytes


def switch_tables(switch: list[dict]) -> str:
    """Markdown tables of task-switch latency, serving memory and serving throughput."""
    ok = [s for s in latest_switch(switch) if s.get("status") == "ok"]
    if not ok:
        return ""
    rows, tput = [], []
    for s in sorted(ok, key=lambda s: (s["model"], s["method"])):
        label = s["method"]
        rows.append({
            "method": label, "model": s["model"], "tasks": ", ".join(s["tasks"]),
            "warm switch (median / p90)": f"{fmt_ms(s['warm_switch']['median_s'])} / {fmt_ms(s['warm_switch']['p90_s'])}",
            "cold switch (median / p90)": f"{fmt_ms(s['cold_switch']['median_s'])} / {fmt_ms(s['cold_switch']['p90_s'])}",
            "forward alone (median / p90)": f"{fmt_ms(s['forward']['median_s'])} / {fmt_ms(s['forward']['p90_s'])}",
            "first output, warm / cold": f"{fmt_ms(s['warm_first_output']['median_s'])} / "
                                         f"{fmt_ms(s['cold_first_output']['median_s'])}",
            "artifact per task": fmt_bytes(statistics.fmean(v for v in s["artifact_bytes"].values() if v is not None)),
            "base weights": fmt_bytes(s.get("base_weight_bytes")),
            f"memory serving {s['n_tasks']} tasks": fmt_bytes(s["serving_mem_bytes"]),
        })
        t = s.get("throughput", {})
        mixed = t.get("mixed_examples_per_s")
        tput.append({
            "method": label, "model": s["model"],
            "one artifact for all (ex/s)": f"{t.get('single_task_examples_per_s', 0):.1f}",
            "grouped by task, switching (ex/s)": f"{t.get('grouped_examples_per_s', 0):.1f}",
            "mixed batches (ex/s)": f"{mixed:.1f}" if mixed is not None else "n/a",
            "mixed / one artifact": f"{t['mixed_over_single']:.2f}" if t.get("mixed_over_single") is not None else "n/a",
            "why n/a": (t.get("mixed_unsupported") or "").split(": ", 1)[-1] if mixed is None else "",
        })
    first = ok[0]
    head = (f"## Task switching\n\nOne frozen base model serving {first['n_tasks']} tasks ({', '.join(first['tasks'])}); "
            f"batch of {first['batch_size']} test examples; median and p90 of {first['repeats']} repeats per ordered "
            f"task pair after {first['warmup']} warm-up rounds (p90: nearest rank), device-synchronised; each figure "
            f"timed directly, none derived as a difference. Warm switch: making the target task's already loaded "
            f"artifact active, no forward pass inside. Cold switch: loading its artifact from its saved files and "
            f"making it active (the OS page cache is {first['page_cache']}: the files were read moments before). "
            f"Beside them: the forward pass alone, and the time to first output (switch + first forward, timed as "
            f"one block). Full fine-tuning holds one full model per task. Memory: resident memory of the base model "
            f"plus all tasks' artifacts over the process before loading ({first['serving_mem_kind']}; every "
            f"loaded weight made resident, so never less than the base weights).\n\n")
    table = md_table(rows, keep=("method",))
    t2 = md_table(tput, keep=("method",))
    tp = first.get("throughput", {})
    serving = ("## Serving throughput\n\nA stream of "
               f"{tp.get('requests', '')} requests alternating between the tasks, in batches of "
               f"{tp.get('batch_size', first['batch_size'])}: (a) mixed batches, each row served by its own task's artifact in one forward "
               "pass; (b) the same requests grouped by task, switching between groups; (c) the same requests all "
               f"served by one task's artifact (no switching, no mixing: the baseline). Best of "
               f"{tp.get('repeats', 3)} passes, the three modes interleaved.\n\n")
    return head + table + "\n\n" + serving + t2 + "\n"
