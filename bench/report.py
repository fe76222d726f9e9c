"""Reports from result records alone: ``make_table(records) -> str`` and ``write_report``.

Rows are methods (runs of the same model/task/method/config pooled over seeds), plus the
majority-class baseline of the task. Accuracy shows "mean ± spread": the std over seeds when there
are several, else the binomial standard error over the test examples (the header says which).
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from bench.results import ResultRecord


def fmt_count(n: float | None) -> str:
    if n is None:
        return "—"
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def fmt_s(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f} s" if x < 1 else f"{x:.1f} s"


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _metric_cell(recs: list[ResultRecord], name: str) -> str:
    vals = [r.metrics[name]["value"] for r in recs if name in r.metrics]
    if not vals:
        return "—"
    if len(vals) > 1:
        return f"{statistics.fmean(vals):.3f} ± {statistics.stdev(vals):.3f}"
    err = recs[0].metrics[name].get("stderr")
    return f"{vals[0]:.3f}" + (f" ± {err:.3f}" if err is not None else "")


def _group(records: list[ResultRecord]) -> dict[tuple, list[ResultRecord]]:
    groups: dict[tuple, list[ResultRecord]] = defaultdict(list)
    for r in records:
        run = r.run
        key = (run.get("model"), run.get("task"), run.get("method"), repr(sorted(run.get("method_config", {}).items())))
        groups[key].append(r)
    return groups


def _natural(text: str) -> list:
    """Sort key that puts num_virtual_tokens=5 before =20 before =100."""
    return [float(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+(?:\.\d+)?)", text))]


def variant_labels(records: list[ResultRecord]) -> dict[tuple, str]:
    """Row label per group: the method name, plus the config values that vary between its runs
    (grids), e.g. ``prompt_tuning (init=random, num_virtual_tokens=20)``."""
    groups = _group(records)
    configs: dict[str, list[dict]] = defaultdict(list)
    for (_, _, method, _), recs in groups.items():
        configs[method].append(recs[0].run.get("method_config", {}))
    labels = {}
    for key, recs in groups.items():
        method, cfg = key[2], recs[0].run.get("method_config", {})
        varying = sorted(k for k in cfg if len({repr(c.get(k)) for c in configs[method]}) > 1)
        labels[key] = method + (f" ({', '.join(f'{k}={cfg[k]}' for k in varying)})" if varying else "")
    return labels


def make_table(records: list[ResultRecord], task: str, metric_names: tuple[str, ...] = ("accuracy",)) -> str:
    """Markdown comparison table for one task (successful runs only; failures listed separately)."""
    ok = [r for r in records if r.status == "ok" and r.run.get("task") == task]
    rows = []
    labels = variant_labels(ok)
    for key, recs in sorted(_group(ok).items(), key=lambda kv: (kv[0][0], _natural(labels[kv[0]]))):
        model, method = key[0], labels[key]
        p = recs[0].params
        res = lambda k: _mean([r.resources.get(k) for r in recs])  # noqa: E731
        total = p.get("total_params") or 0
        row = {"method": method, "model": model}
        for m in metric_names:
            row[f"{m} ↑"] = _metric_cell(recs, m)
        row.update({
            "trainable params ↓": fmt_count(p.get("trainable_params")),
            "% of total": f"{100 * p['trainable_params'] / total:.3f}%" if total else "—",
            "of which head": fmt_count(p.get("trainable_head_params")),
            "stored": fmt_bytes(p.get("stored_bytes")),
            "peak train mem ↓": fmt_bytes(res("peak_mem_train_bytes")),
            "peak eval mem ↓": fmt_bytes(res("peak_mem_eval_bytes")),
            "train time ↓": fmt_s(res("train_time_s")),
            "step time ↓": fmt_s(res("step_time_median_s")),
            "seeds": len(recs),
        })
        rows.append(row)
    base = [r.baselines.get("majority_accuracy") for r in records if r.run.get("task") == task and r.baselines]
    if base:
        row = {k: "—" for k in (rows[0] if rows else {"method": "", "model": ""})}
        row.update({"method": "majority class (baseline)", "model": "—", "accuracy ↑": f"{base[0]:.3f}"})
        rows.append(row)
    if not rows:
        return "_no successful runs_"
    df = pd.DataFrame(rows).fillna("—")
    return tabulate(df, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)


def _fmt_wall(s: float | None) -> str:
    return "unknown" if s is None else f"{s:.0f} s ({s / 60:.1f} min)"


def _failures(records: list[ResultRecord]) -> str:
    bad = [r for r in records if r.status != "ok"]
    if not bad:
        return ""
    lines = ["## Runs that did not finish", ""]
    for r in bad:
        first = (r.error or "").strip().splitlines()[-1:] or [""]
        lines.append(f"- `{r.run.get('run_id')}`: **{r.status}** — {first[0]}")
    return "\n".join(lines) + "\n"


def wall_time_s(records: list[ResultRecord]) -> float | None:
    """From the first run's start to the last run's end (the suite's wall time if run at once)."""
    from datetime import datetime

    stamps = [(r.run.get("started_at"), r.run.get("finished_at")) for r in records]
    try:
        starts = [datetime.strptime(a, "%Y-%m-%dT%H:%M:%S%z") for a, _ in stamps if a]
        ends = [datetime.strptime(b, "%Y-%m-%dT%H:%M:%S%z") for _, b in stamps if b]
    except (TypeError, ValueError):
        return None
    return (max(ends) - min(starts)).total_seconds() if starts and ends else None


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1e3:.2f} ms" if x < 1 else f"{x:.2f} s"


def switch_tables(switch: list[dict]) -> str:
    """Markdown tables of task-switch latency, serving memory and serving throughput."""
    latest = {tuple(s.get("run_ids", [])): s for s in switch}  # a re-measurement replaces the earlier one
    ok = [s for s in latest.values() if s.get("status") == "ok"]
    if not ok:
        return ""
    rows, tput = [], []
    for s in sorted(ok, key=lambda s: (s["model"], s["method"])):
        label = s["method"]
        rows.append({
            "method": label, "model": s["model"], "tasks": ", ".join(s["tasks"]),
            "warm switch (median / p90)": f"{_ms(s['warm_switch']['median_s'])} / {_ms(s['warm_switch']['p90_s'])}",
            "switch itself (activate)": _ms(s["warm_switch_cost_s"]),
            "cold switch (median / p90)": f"{_ms(s['cold_switch']['median_s'])} / {_ms(s['cold_switch']['p90_s'])}",
            "forward alone": _ms(s["forward"]["median_s"]),
            "artifact per task": fmt_bytes(statistics.fmean(v for v in s["artifact_bytes"].values() if v is not None)),
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
            f"task pair after {first['warmup']} warm-up rounds, device-synchronised. Warm: the target task's artifact "
            f"is already loaded (activate + first forward); the switch itself is the activate step, timed alone. Cold: it is loaded from its saved files first (the OS page "
            f"cache is {first['page_cache']}: the files were read moments before). Full fine-tuning holds one full "
            f"model per task. Memory: resident memory of the base model plus all tasks' artifacts over the process "
            f"before loading ({first['serving_mem_kind']}).\n\n")
    table = tabulate(pd.DataFrame(rows), headers="keys", tablefmt="github", showindex=False, disable_numparse=True)
    t2 = tabulate(pd.DataFrame(tput), headers="keys", tablefmt="github", showindex=False, disable_numparse=True)
    tp = first.get("throughput", {})
    serving = ("## Serving throughput\n\nA stream of "
               f"{tp.get('requests', '')} requests alternating between the tasks, in batches of "
               f"{tp.get('batch_size', first['batch_size'])}: (a) mixed batches, each row served by its own task's artifact in one forward "
               "pass; (b) the same requests grouped by task, switching between groups; (c) the same requests all "
               f"served by one task's artifact (no switching, no mixing: the baseline). Best of "
               f"{tp.get('repeats', 3)} passes, the three modes interleaved.\n\n")
    return head + table + "\n\n" + serving + t2 + "\n"


def write_report(records: list[ResultRecord], out_dir: Path, title: str, command: str,
                 notes: str = "", switch: list[dict] | None = None) -> Path:
    """Write ``out_dir/README.md``; everything in it comes from ``records``."""
    from bench.registry import TASKS, load_builtin_plugins

    load_builtin_plugins()
    ok = [r for r in records if r.status == "ok"]
    ref = ok[0] if ok else (records[0] if records else None)
    lines = [f"# {title}", ""]
    if notes:
        lines += [notes, ""]
    if ref is not None and ref.env:
        env, tr = ref.env, ref.run.get("train", {})
        pk = env.get("packages", {})
        lines += [
            "| setting | value |", "|---|---|",
            f"| models | {', '.join(sorted({r.run.get('model') for r in records}))} |",
            f"| device | {env.get('device')} ({env.get('device_name')}), {env.get('torch_threads')} torch threads |",
            f"| training | {tr.get('steps')} steps × batch {tr.get('batch_size')}, AdamW, linear warm-up "
            f"{tr.get('warmup_ratio')} then decay, head lr {tr.get('head_lr')}, max length {tr.get('max_length')} |",
            f"| data | up to {tr.get('n_train')} training examples, {ref.run.get('n_test')} test examples per task |",
            f"| seeds | {', '.join(map(str, sorted({r.run.get('train', {}).get('seed') for r in records})))} |",
            f"| runs | {len(records)} ({len(ok)} ok), wall time {_fmt_wall(wall_time_s(records))} from the first run's "
            f"start to the last run's end |",
            "| packages | " + ", ".join(f"{k} {v}" for k, v in pk.items() if v) + " |",
            f"| commit | {env.get('git_commit')}{' (dirty)' if env.get('git_dirty') else ''} |",
            f"| reproduce | `{command}` |", "",
        ]
    lines += [
        "Columns: accuracy on the held-out test split (± binomial standard error for one seed, ± std "
        "over seeds otherwise); trainable params = parameters with requires_grad while training "
        "(for encoders this includes the classification head every method trains, shown as "
        "'of which head'); stored = bytes of the saved artifact; peak memory = "
        + ("peak RSS above the post-load baseline, sampled every 5 ms" if (ref and ref.resources.get("peak_mem_kind") == "cpu_rss_sampled")
           else "torch.cuda.max_memory_allocated above the post-load baseline")
        + "; step time = median over training steps (first step excluded).", ""]
    for task in sorted({r.run.get("task") for r in records}):
        spec = TASKS.get(task) if task in TASKS else None
        names = spec.metrics if spec else ("accuracy",)
        lines += [f"## {task}", ""]
        if spec:
            lines += [f"{spec.description}. Label words: {', '.join(spec.label_words)}.", ""]
        lines += [make_table(records, task, names), ""]
    if switch:
        lines.append(switch_tables(switch))
    lines.append(_failures(records))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "README.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
