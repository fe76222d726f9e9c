"""What makes runs one variant: everything but their seed (``variant_key``), and grouping by it."""

from __future__ import annotations

from collections import defaultdict

from peft_bench.results.schema import ResultRecord, RunInfo


def settings(run: RunInfo) -> dict:
    """What defines a run besides model, task, method and method config, without its seed: the
    training settings and the data (its source and fingerprint)."""
    out = {k: v for k, v in (run.train or {}).items() if k != "seed"}
    for k in ("task_source", "data"):
        if getattr(run, k) is not None:
            out[k] = getattr(run, k)
    return out


def variant_key(run: RunInfo) -> tuple:
    """Everything that defines a run except its seed: runs with the same key are pooled as seeds."""
    return (run.model, run.task, run.method, repr(sorted(run.method_config.items())),
            repr(sorted(settings(run).items())))


def group(records: list[ResultRecord]) -> dict[tuple, list[ResultRecord]]:
    groups: dict[tuple, list[ResultRecord]] = defaultdict(list)
    for r in records:
        groups[variant_key(r.run)].append(r)
    return groups
