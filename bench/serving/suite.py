"""Task-switch measurements of a suite's runs: one isolated process per group of runs that share
everything but the task, each measurement appended to ``switch.jsonl`` (``SWITCH_SCHEMA_VERSION``)."""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Callable

from peft_bench.execution.local import call_isolated
from peft_bench.results.schema import SWITCH_SCHEMA_VERSION, ResultRecord
from peft_bench.results.store import append_line, read_json_lines
from peft_bench.serving.switching import measure_group, switch_groups


def _measure_group_safely(group, repeats: int) -> dict:
    try:
        return {"status": "ok", **measure_group(group, repeats=repeats)}
    except Exception as e:  # noqa: BLE001 - a failed measurement is recorded, not fatal
        return {"status": "failed", "error": "\n".join(traceback.format_exception(e)[-4:]),
                "run_ids": [r.run_id for r in group]}


def run_switch(records: list[ResultRecord], out_dir: Path, *, repeats: int = 20, force: bool = False,
               isolate: bool = True, log: Callable[[str], None] = print) -> list[dict]:
    """Measure task switching and serving for every group of runs that share all but the task;
    each measurement runs in its own process and is appended to ``out_dir/switch.jsonl``."""

    path = Path(out_dir) / "switch.jsonl"
    done = {tuple(r.get("run_ids", [])) for r in read_json_lines(path)  # measured with this protocol
            if r.get("status") == "ok" and r.get("schema_version") == SWITCH_SCHEMA_VERSION}
    out = []
    groups = switch_groups(records)
    for i, group in enumerate(groups, 1):
        ids = tuple(r.run_id for r in group)
        if ids in done and not force:
            continue
        log(f"[switch {i}/{len(groups)}] {group[0].run.model} {group[0].run.method}: "
            f"{', '.join(r.run.task for r in group)}")
        missing = [f"{r.run.task}: {r.run.artifact_dir}" for r in group if not Path(r.run.artifact_dir).is_dir()]
        if missing:
            res = {"status": "failed", "run_ids": list(ids),
                   "error": f"artifact folder(s) missing, so this method cannot be measured: {'; '.join(missing)}."}
        elif isolate:
            res, timed_out, code, _ = call_isolated(_measure_group_safely, (group, repeats))
            if res is None:
                res = {"status": "timeout" if timed_out else "killed", "run_ids": list(ids),
                       "error": f"measurement process ended without a result (exit code {code})."}
        else:
            res = _measure_group_safely(group, repeats)
        res["schema_version"] = SWITCH_SCHEMA_VERSION
        append_line(path, json.dumps(res, sort_keys=True))
        if res["status"] == "ok":
            log(f"    warm switch {res['warm_switch']['median_s'] * 1e3:.3f} ms, cold switch "
                f"{res['cold_switch']['median_s'] * 1e3:.1f} ms (forward alone {res['forward']['median_s'] * 1e3:.1f} ms)")
        else:
            log(f"    -> {res['status']}: {' '.join((res.get('error') or '').strip().splitlines()[-1:])}")
        out.append(res)
    return out
