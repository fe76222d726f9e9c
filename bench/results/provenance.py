"""What a report states about how its numbers were made: the settings table at its top (suites,
device, training, data, packages, lock, commits, the command that regenerates it) and what its
memory and MFU columns measure."""

from __future__ import annotations

from peft_bench.results.store import ResultRecord
from peft_bench.results.units import fmt_flops


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


def _fmt_wall(s: float | None) -> str:
    return "unknown" if s is None else f"{s:.0f} s ({s / 60:.1f} min)"


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
    env = ref.env
    pk = (env.packages or {})

    def training(r: ResultRecord) -> str:
        tr = r.run.train or {}
        return (f"{tr.get('steps')} steps × batch {tr.get('batch_size')}, AdamW, linear warm-up "
                f"{tr.get('warmup_ratio')} then decay, head lr {tr.get('head_lr')}, max length {tr.get('max_length')}, "
                f"mixed precision {tr.get('mixed_precision')}")

    def data(r: ResultRecord) -> str:
        tr = r.run.train or {}
        return (f"up to {tr.get('n_train')} training examples per task; validation examples: "
                + (str(r.run.n_validation) if r.run.n_validation else "none")
                + f" ({tr.get('eval_points', 0)} evaluation points); test examples: {r.run.n_test}")

    return [
        "| setting | value |", "|---|---|",
        f"| suite | {', '.join(sorted({str(r.run.suite) for r in records}))} |",
        f"| models | {', '.join(sorted({r.run.model for r in records}))} |",
        f"| device | {env.device} ({env.device_name}), {env.torch_threads} torch threads, "
        f"{env.cpu_count} CPUs |",
        f"| training | {_per_suite(ok or records, training)} |",
        f"| data | {_per_suite(ok or records, data)} |",
        f"| hyperparameters | {_selection(ok)} |",
        f"| seeds | {', '.join(map(str, sorted({(r.run.train or {}).get('seed') for r in records})))} |",
        f"| runs | {len(records)} ({len(ok)} ok); {_fmt_wall(wall_time_s(records))} from the first run's start to the "
        f"last run's end; the runs' own wall times sum to "
        f"{_fmt_wall(sum(r.resources.run_wall_s or 0.0 for r in records))} |",
        "| packages | " + ", ".join(f"{k} {v}" for k, v in pk.items() if v) + f", python {env.python} |",
        f"| lock | {lock_summary(records)} |",
        f"| commit | {_per_suite(records, lambda r: f'{r.env.git_commit}' + (' (dirty)' if r.env.git_dirty else ''), count=True)} |",
        f"| reproduce | `{command}` |", "",
    ]


def _per_suite(records: list[ResultRecord], describe, count: bool = False) -> str:
    """One value for all the records, or each distinct value with the suites (and, ``count``, the
    number of runs) it belongs to: a report over several suites states every setting it holds."""
    groups: dict[str, list[ResultRecord]] = {}
    for r in records:
        groups.setdefault(describe(r), []).append(r)
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{v} ({', '.join(sorted({str(r.run.suite) for r in rs}))}"
                     + (f": {len(rs)} run{'s' if len(rs) > 1 else ''}" if count else "") + ")"
                     for v, rs in groups.items())


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
