"""peftbench: run suites of PEFT methods, report and list what is available.

    peftbench list                       # methods, tasks, models, suites (one line each)
    peftbench list --configs             # plus every method's config fields
    peftbench run                        # the default suite ("quick") -> results/quick/
    peftbench run lester --set steps=50  # a built-in suite or a suite.toml, with train overrides
    peftbench report results/quick --out reports/quick
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from bench.config import ConfigError, TrainConfig, describe, parse_overrides

DEFAULT_SUITE = "quick"


def _train_help() -> str:
    rows = [f"  {n} ({t}, default {d!r}): {h}" for n, t, d, h in describe(TrainConfig) if n != "seed"]
    return "training settings for --set KEY=VALUE:\n" + "\n".join(rows)


def cmd_list(args: argparse.Namespace) -> int:
    from bench import models
    from bench.registry import METHODS, TASKS, load_builtin_plugins
    from bench.suite import builtin_suites

    load_builtin_plugins()
    print("methods:")
    for name in METHODS.names():
        cls = METHODS.get(name)
        print(f"  {name:<20} {cls.description}")
        if args.configs:
            for f, t, d, h in describe(cls.config_cls):
                print(f"      {f} ({t}, default {d!r}): {h}")
    print("tasks:")
    for name in TASKS.names():
        t = TASKS.get(name)
        print(f"  {name:<20} {t.description}; labels: {', '.join(t.label_words)}; metrics: {', '.join(t.metrics)}")
    print("models:")
    for name, desc in models.describe_all():
        print(f"  {name:<20} {desc}")
    print("  (or any Hugging Face model id or local model folder)")
    print("suites:")
    for s in builtin_suites():
        print(f"  {s}{' (default)' if s == DEFAULT_SUITE else ''}")
    return 0


def _die_with_parent() -> None:
    """Linux: the run dies with the server that forked it (which exits with the suite process),
    so killing a suite never leaves an orphaned run behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child(spec, out_dir, conn) -> None:
    from bench.runner import execute

    _die_with_parent()
    record = execute(spec, out_dir)
    conn.send(record)
    conn.close()


_PRELOAD = ["bench.preload"]


def run_isolated(spec, out_dir: Path, timeout_s: float | None):
    """Run one spec in its own child process, so that its peak memory is its own and a crash or
    hang takes down only this run. Children fork from a forkserver that imported torch & co once
    and never ran a torch op (a plain fork of a process that has run OpenMP work can hang)."""
    from bench.results import ResultRecord
    from bench.runner import _run_section

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(spec, out_dir, child), daemon=True)
    proc.start()
    child.close()
    record = None
    if parent.poll(timeout_s):
        try:
            record = parent.recv()
        except EOFError:
            record = None
    proc.join(5 if record is not None else 0.1)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if record is None:
        status = "timeout" if proc.exitcode in (None, -9) and timeout_s else "killed"
        return ResultRecord(run=_run_section(spec), status=status,
                            error=f"child process ended without a result (exit code {proc.exitcode}).")
    return record


def cmd_run(args: argparse.Namespace) -> int:
    from bench.report import write_report
    from bench.results import append_record, read_records
    from bench.suite import load_suite

    suite = load_suite(args.suite, parse_overrides(args.set))
    out_dir = Path(args.out) / suite.name
    results = out_dir / "results.jsonl"
    done = {r.run_id for r in read_records(results) if r.status == "ok"} if results.exists() and not args.force else set()
    todo = [s for s in suite.runs if s.run_id not in done]
    print(f"suite {suite.name} ({suite.path}): {len(suite.runs)} runs, {len(suite.runs) - len(todo)} already done "
          f"in {results}")
    if args.dry_run:
        for s in suite.runs:
            print(f"  {'done' if s.run_id in done else 'todo'}  {s.run_id}")
        return 0
    t0 = time.perf_counter()
    failed = 0
    for i, spec in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {spec.model} {spec.task} {spec.method} seed {spec.train.seed}", flush=True)
        rec = run_isolated(spec, out_dir, args.timeout) if args.isolate else _inline(spec, out_dir)
        append_record(results, rec)
        acc = rec.metrics.get("accuracy", {}).get("value")
        print(f"    -> {rec.status}" + (f", accuracy {acc:.3f}" if acc is not None else "")
              + (f"\n    {rec.error.splitlines()[-1]}" if rec.error else ""), flush=True)
        failed += rec.status != "ok"
    wall = time.perf_counter() - t0
    records = read_records(results)
    cmd = "peftbench run " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    report = write_report(records, out_dir, f"peft-bench report: {suite.name}", cmd.strip(), notes=suite.description)
    print(f"suite wall time {wall:.1f} s; results: {results}; report: {report}")
    if failed:
        print(f"{failed} run(s) did not finish ok", file=sys.stderr)
    return 1 if failed else 0


def _inline(spec, out_dir):
    from bench.runner import execute

    return execute(spec, out_dir)


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import write_report
    from bench.results import read_records
    from bench.suite import load_suite

    src = Path(args.results)
    path = src / "results.jsonl" if src.is_dir() else src
    if not path.is_file():
        raise FileNotFoundError(f"`results` must be a results.jsonl file or a folder holding one, got {str(src)!r}.")
    records = read_records(path)
    out = Path(args.out) if args.out else path.parent
    out.mkdir(parents=True, exist_ok=True)
    if (out / "results.jsonl").resolve() != path.resolve():
        shutil.copyfile(path, out / "results.jsonl")  # the report folder holds its own records
    suite = records[0].run.get("suite") if records else path.parent.name
    cmd = f"peftbench report {out / 'results.jsonl'} --out {out}"
    notes = args.notes
    if not notes and suite:
        try:
            notes = load_suite(suite).description + f"\n\nThe records come from `peftbench run {suite}`."
        except ValueError:
            notes = ""
    report = write_report(records, out, f"peft-bench report: {suite}", cmd, notes=notes)
    print(report.read_text())
    print(f"wrote {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peftbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="methods, tasks, models and suites")
    ls.add_argument("--configs", action="store_true", help="also print every method's config fields")
    ls.set_defaults(func=cmd_list)
    run = sub.add_parser("run", help="run a suite", epilog=_train_help(),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("suite", nargs="?", default=DEFAULT_SUITE, help="built-in suite name or path to a .toml")
    run.add_argument("--out", default="results", help="results root (results/<suite>/results.jsonl)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a [train] setting (type-checked)")
    run.add_argument("--force", action="store_true", help="re-run runs that already finished ok")
    run.add_argument("--dry-run", action="store_true", help="print the expanded runs and exit")
    run.add_argument("--timeout", type=float, default=None, help="seconds per run before it is killed")
    run.add_argument("--no-isolate", dest="isolate", action="store_false",
                     help="run in this process instead of a forked child per run")
    run.set_defaults(func=cmd_run)
    rep = sub.add_parser("report", help="write a markdown report from result records")
    rep.add_argument("results", help="results.jsonl, or a folder holding one")
    rep.add_argument("--out", default=None, help="report folder (default: next to the results)")
    rep.add_argument("--notes", default="", help="text placed under the title")
    rep.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork per run
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, KeyError, FileNotFoundError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"peftbench: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
