"""peftbench: run suites of PEFT methods, report and list what is available.

    peftbench list                       # methods, tasks, models, suites (one line each)
    peftbench list --configs             # plus every method's config fields
    peftbench run                        # the default suite ("quick") -> results/quick/
    peftbench run lester --set steps=50  # a built-in suite or a suite.toml, with train overrides
    peftbench report results/quick --out reports/quick   # README.md + PNG figures
    peftbench compare results/quick other/quick          # markdown diff of two result sets
    peftbench doctor [--latest [--uncapped]]             # environment against the lock; upstream drift
    peftbench run big.toml --executor ray                # one Ray task per run, over a Ray cluster
    peftbench run quick --shard 2/8                      # shard 2 of 8 (e.g. a SLURM array task) ...
    peftbench merge results/quick/shard-*-of-8 --out results/quick   # ... joined afterwards
    accelerate launch --multi_gpu --num_processes 8 -m bench.cli run big.toml   # each run on 8 GPUs (DDP)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import shlex
import shutil
import sys
from pathlib import Path

from bench.config import ConfigError, TrainConfig, describe, parse_overrides

DEFAULT_SUITE = "quick"


def _train_help() -> str:
    rows = [f"  {n} ({t}, default {d!r}): {h}" for n, t, d, h in describe(TrainConfig) if n != "seed"]
    return "training settings for --set KEY=VALUE:\n" + "\n".join(rows)


def _shard_arg(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 1 <= I <= N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        i = n = 0
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"must look like I/N with 1 <= I <= N (e.g. 1/4), got {text!r}")
    return i, n


def _timeout_arg(text: str) -> float:
    """Seconds per run: a positive finite number."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (e.g. 3600), got {text!r}")
    return value


def _resources_arg(text: str) -> float:
    """A Ray resource amount per run: a number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 (e.g. 1 or 0.5), got {text!r}")
    return value


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


def cmd_run(args: argparse.Namespace) -> int:
    from bench import distributed

    launched = distributed.launched()  # one of the processes of `accelerate launch` / torchrun
    if launched and args.executor != "local":
        raise ValueError(f"`--executor` must be 'local' under `accelerate launch` (every process runs "
                         f"the suite's runs together), got {args.executor!r}.")
    isolate = args.isolate and not launched  # the process group lives in the launched processes
    # runs will be forked from the run server: start it now, and use the wait (below)
    server_first = isolate and args.executor == "local" and not args.dry_run
    if server_first:
        from bench.server import start_early

        start_early(args.suite)  # the run server's imports overlap with this process's own
    from bench.executor import estimate_s, known_records, select, shard
    from bench.report import fmt_s
    from bench.results import check_writable, store_lock
    from bench.paths import contained
    from bench.suite import check_task_data, load_suite

    suite = load_suite(args.suite, parse_overrides(args.set))
    check_task_data(suite)  # local task data, read and checked before any run (also for --dry-run)
    specs, out_dir = suite.runs, contained(Path(args.out) / suite.name, args.out, "the result folder")
    if args.shard:
        i, n = args.shard
        specs, out_dir = shard(specs, i, n), out_dir / f"shard-{i}-of-{n}"
    results = out_dir / "results.jsonl"
    main = distributed.is_main()
    say = (lambda m: print(m, flush=True)) if main else (lambda m: None)  # noqa: E731
    timeout = args.timeout if args.timeout is not None else suite.timeout_s
    if timeout is not None and not isolate and args.executor == "local":
        if args.timeout is not None:
            raise ValueError("`--timeout` needs a run process to kill: it cannot be enforced with `--no-isolate` "
                             "or under `accelerate launch`; drop one of them.")
        say(f"note: the suite's timeout_s ({timeout:g} s) is not enforced: runs are not in their own processes")
        timeout = None
    writing = main and not args.dry_run
    if writing:
        check_writable(out_dir)  # a read-only disk or a file in its place is found before any run
    # one writer per store, from before it decides what is left to run: a second suite on it is refused
    with store_lock(out_dir) if writing else contextlib.nullcontext():
        mode = "force" if args.force else "rerun_failed" if args.rerun_failed else "resume"
        todo, recorded = select(specs, results, mode)
        todo_ids = set(distributed.broadcast([s.run_id for s in todo]))  # the main process's view, for all
        todo = [s for s in specs if s.run_id in todo_ids]
        say(f"suite {suite.name} ({suite.path}){f' shard {i}/{n}' if args.shard else ''}: {len(specs)} runs, "
            f"{len(specs) - len(todo)} skipped (already recorded in {results}), {len(todo)} to run"
            + (f", each on {distributed.state().num_processes} processes" if launched else ""))
        if args.dry_run:
            known = known_records(Path(args.out), Path(__file__).resolve().parent.parent / "reports")
            total, unknown = 0.0, 0
            for s in specs:
                est = estimate_s(s, known) if s in todo else None
                total += est or 0.0
                unknown += s in todo and est is None
                state = recorded.get(s.run_id, "todo") if s in todo else f"skip ({recorded.get(s.run_id)})"
                say(f"  {state:<14} {s.run_id:<60} {'~' + fmt_s(est) if est is not None else ''}")
            say(f"estimated time: ~{total / 60:.1f} min for {len(todo) - unknown} runs with measured step times"
                + (f"; {unknown} runs have none (no earlier run of that model and task)" if unknown else ""))
            return 0
        if server_first and todo and not args.shard:
            from bench import plots

            plots.warm_up()  # while the run server still imports (see its doc)
        return _run_suite(args, suite, todo, out_dir, results, timeout, isolate, say)


def _run_suite(args, suite, todo, out_dir: Path, results: Path, timeout, isolate: bool, say) -> int:
    """The part of ``run`` that runs: executor, then (main process) switching, report, summary."""
    from bench import distributed
    from bench.executor import run_local
    from bench.report import write_report
    from bench.results import read_json_lines, read_records

    main = distributed.is_main()
    if args.shard:
        i, n = args.shard
    if args.executor == "ray":
        from bench.ray_executor import run_ray

        outcome = run_ray(todo, out_dir, address=args.ray_address, cpus_per_run=args.cpus_per_run,
                          gpus_per_run=args.gpus_per_run, timeout_s=timeout,
                          memory_limit_gb=suite.memory_limit_gb, isolate=args.isolate, log=say)
    else:
        outcome = run_local(todo, out_dir, isolate=isolate, timeout_s=timeout, memory_limit_gb=suite.memory_limit_gb,
                            write=main, log=say)
    if not main:
        return 1 if outcome.failed else 0
    if outcome.interrupted:
        _summary(outcome, results, say)
        return 130
    report_failed = False
    records = read_records(results) if results.exists() else []
    if args.shard:
        root = Path(args.out) / suite.name
        say(f"shard {i}/{n} done: {results}. When every shard is done:\n"
            f"  peftbench merge {root}/shard-*-of-{n} --out {root}\n"
            f"  then `peftbench switch {root}` (if the suite measures switching) and `peftbench report {root}`")
    else:
        if suite.switch and args.switch:
            from bench.executor import run_switch

            measured = run_switch(records, out_dir, repeats=suite.switch_repeats, isolate=args.isolate, log=say)
            report_failed = any(m.get("status") != "ok" for m in measured)  # said above, and in the exit code
        cmd = "peftbench run " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        try:
            report = write_report(records, out_dir, f"peft-bench report: {suite.name}", cmd.strip(),
                                  notes=suite.description, switch=read_json_lines(out_dir / "switch.jsonl"))
            say(f"report: {report}")
        except OSError as e:  # the records are whole; the report can be written later
            report_failed = True
            print(f"peftbench: error: the report could not be written ({e.strerror or e}); the records are "
                  f"complete: `peftbench report {out_dir}` writes it once there is room.", file=sys.stderr)
    _summary(outcome, results, say)
    return 1 if outcome.failed or report_failed else 0


def _summary(outcome, results: Path, say) -> None:
    over = outcome.isolation_overhead_s
    say(f"suite wall time {outcome.wall_s:.1f} s for {len(outcome.records)} runs"
        + (f" (process isolation: median {over:.2f} s per run)" if over is not None else "")
        + f"; results: {results}")
    by_status: dict[str, int] = {}
    for r in outcome.records:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    say("summary: " + (", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) or "nothing to run")
        + (" (interrupted)" if outcome.interrupted else ""))
    for r in outcome.failed:
        print(f"  {r.status}: {r.run_id}: {(r.error or '').strip().splitlines()[-1] if r.error else ''}", file=sys.stderr)


def cmd_merge(args: argparse.Namespace) -> int:
    from bench.executor import merge_stores

    records, dropped = merge_stores([Path(s) for s in args.sources], Path(args.out))
    by_status: dict[str, int] = {}
    for r in records:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    print(f"merged {len(args.sources)} result store(s) into {Path(args.out) / 'results.jsonl'}: {len(records)} runs "
          f"({', '.join(f'{n} {s}' for s, n in sorted(by_status.items())) or 'none'}); "
          f"{dropped} duplicate record(s) dropped (an ok record wins, then the later one)")
    print(f"next: `peftbench report {args.out}`")
    return 0


def cmd_switch(args: argparse.Namespace) -> int:
    from bench.executor import run_switch
    from bench.results import read_records

    src = Path(args.results)
    path = src / "results.jsonl" if src.is_dir() else src
    if not path.is_file():
        raise FileNotFoundError(f"`results` must be a results.jsonl file or a folder holding one, got {str(src)!r}.")
    res = run_switch(read_records(path), path.parent, repeats=args.repeats, force=args.force,
                     isolate=args.isolate, log=lambda m: print(m, flush=True))
    print(f"{len(res)} measurement(s) appended to {path.parent / 'switch.jsonl'}; "
          f"`peftbench report {path.parent}` shows them")
    return 1 if any(r.get("status") != "ok" for r in res) else 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import write_report
    from bench.results import read_json_lines, read_records
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
        if (path.parent / "switch.jsonl").exists():
            shutil.copyfile(path.parent / "switch.jsonl", out / "switch.jsonl")
    suite = records[0].run.get("suite") if records else path.parent.name
    cmd = f"peftbench report {out / 'results.jsonl'} --out {out}"
    notes = args.notes
    if not notes and suite:
        try:
            notes = load_suite(suite).description + f"\n\nThe records come from `peftbench run {suite}`."
        except ValueError:
            notes = ""
    report = write_report(records, out, f"peft-bench report: {suite}", cmd, notes=notes,
                          switch=read_json_lines(out / "switch.jsonl"))
    print(report.read_text())
    print(f"wrote {report}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from bench.compare import compare_markdown, load

    a_records, a_switch, a_path = load(args.a)
    b_records, b_switch, b_path = load(args.b)
    text = compare_markdown(a_records, b_records, str(a_path), str(b_path), a_switch, b_switch)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def cmd_bench_overhead(args: argparse.Namespace) -> int:
    from bench.overhead import PLAIN_METHODS, markdown, measure, suite_overhead
    from bench.runner import RunSpec
    from bench.suite import load_suite

    log = lambda m: print(m, flush=True)  # noqa: E731
    parts = []
    if args.suite:
        parts.append(suite_overhead(args.suite, log=log, sets=args.set))
    else:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        bad = [m for m in methods if m not in PLAIN_METHODS]
        if bad:
            raise ValueError(f"`--methods` must be among {', '.join(PLAIN_METHODS)} (the plain loop's methods), got {bad}.")
        # the default suite's training settings and method configs, unless overridden
        base = {(r.method, r.task): r for r in load_suite("quick", parse_overrides(args.set)).runs}
        specs = {}
        for m in methods:
            ref = base.get((m, args.task)) or next(r for r in base.values() if r.method == m)
            specs[m] = RunSpec(model=args.model, task=args.task, method=m, method_config=ref.method_config,
                               train=ref.train, suite="bench-overhead")
        pairs = measure(specs, args.repeats, log=log)
        parts.append(markdown(pairs, next(iter(specs.values())), args.repeats))
    text = "\n".join(parts)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from bench import doctor

    if args.latest:
        return doctor.latest(uncapped=args.uncapped, venv=Path(args.venv) if args.venv else None,
                             log=lambda m: print(m, flush=True))
    return doctor.check_lock()


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
    run.add_argument("--force", action="store_true", help="re-run every run, even those already recorded")
    run.add_argument("--rerun-failed", action="store_true", help="re-run the runs recorded as not ok")
    run.add_argument("--dry-run", action="store_true", help="print the expanded runs and exit")
    run.add_argument("--timeout", type=_timeout_arg, default=None,
                     help="seconds per run before it is killed (default: the suite's timeout_s, else none)")
    run.add_argument("--no-isolate", dest="isolate", action="store_false",
                     help="run in this process (--executor ray: in the Ray worker) instead of a forked child per run")
    run.add_argument("--no-switch", dest="switch", action="store_false",
                     help="skip the suite's task-switch measurements (`peftbench switch` can take them later)")
    run.add_argument("--shard", default=None, metavar="I/N", type=_shard_arg,
                     help="run only shard I of N of the suite (into <out>/<suite>/shard-I-of-N/; join with `merge`)")
    run.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="local: one run after the other on this machine (default); ray: one Ray task per run "
                          "over a Ray cluster (pip install 'peft-bench[ray]')")
    run.add_argument("--ray-address", default=None,
                     help="Ray cluster to use (e.g. auto, ray://head:10001; default: $RAY_ADDRESS, else a local Ray)")
    run.add_argument("--gpus-per-run", type=_resources_arg, default=None,
                     help="Ray: GPUs each run asks for (default: 1 on a cluster with GPUs, else 0)")
    run.add_argument("--cpus-per-run", type=_resources_arg, default=1, help="Ray: CPUs each run asks for (default 1)")
    run.set_defaults(func=cmd_run)
    mg = sub.add_parser("merge", help="join result stores (e.g. the shards of a suite) into one, each run once")
    mg.add_argument("sources", nargs="+", help="results.jsonl files or folders holding one")
    mg.add_argument("--out", required=True, help="folder of the merged results.jsonl (records there are kept)")
    mg.set_defaults(func=cmd_merge)
    sw = sub.add_parser("switch", help="measure task switching and serving on a suite's saved artifacts (no retraining)")
    sw.add_argument("results", help="results.jsonl, or a folder holding one (its artifacts must still be on disk)")
    sw.add_argument("--repeats", type=int, default=20, help="measured repeats per ordered task pair (after warm-up)")
    sw.add_argument("--force", action="store_true", help="measure again groups already measured")
    sw.add_argument("--no-isolate", dest="isolate", action="store_false", help="measure in this process")
    sw.set_defaults(func=cmd_switch)
    rep = sub.add_parser("report", help="write a markdown report from result records")
    rep.add_argument("results", help="results.jsonl, or a folder holding one")
    rep.add_argument("--out", default=None, help="report folder (default: next to the results)")
    rep.add_argument("--notes", default="", help="text placed under the title")
    rep.set_defaults(func=cmd_report)
    cmp = sub.add_parser("compare", help="markdown diff of two result sets: B/A per metric, flagged beyond the spread")
    cmp.add_argument("a", help="results.jsonl (or a folder holding one): the reference")
    cmp.add_argument("b", help="results.jsonl (or a folder holding one): compared against A")
    cmp.add_argument("--out", default="compare.md", help="markdown file to write (default: compare.md)")
    cmp.set_defaults(func=cmd_compare)
    ov = sub.add_parser("bench-overhead", help="the harness against a plain PyTorch + peft loop doing the same work",
                        epilog=_train_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ov.add_argument("--model", default="minilm", help="an encoder model (default: minilm)")
    ov.add_argument("--task", default="sentiment", help="a single-text task (default: sentiment)")
    ov.add_argument("--methods", default="lora,prompt_tuning", help="comma-separated: lora, prompt_tuning")
    ov.add_argument("--repeats", type=int, default=5, help="interleaved harness / plain pairs per method (default 5)")
    ov.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a training setting (default: the quick suite's)")
    ov.add_argument("--suite", default=None,
                    help="instead: time `peftbench run SUITE --no-switch` against its runs' pure train + eval time")
    ov.add_argument("--out", default=None, help="also write the markdown to this file")
    ov.set_defaults(func=cmd_bench_overhead)
    dr = sub.add_parser("doctor", help="is this environment the locked one? (--latest: what upstream drift breaks)")
    dr.add_argument("--latest", action="store_true",
                    help="install the newest versions pyproject.toml allows into a scratch venv and run the "
                         "method contract tests there; print which methods break with which versions")
    dr.add_argument("--uncapped", action="store_true", help="with --latest: drop pyproject's upper bounds too")
    dr.add_argument("--venv", default=None, help="with --latest: build the scratch venv here and keep it "
                                                 "(default: a temporary folder, removed afterwards)")
    dr.set_defaults(func=cmd_doctor)
    return p


def main(argv: list[str] | None = None) -> int:
    from bench.results import StoreBusy, StoreWriteError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork per run
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, KeyError, FileNotFoundError, ValueError, StoreWriteError, StoreBusy) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"peftbench: error: {msg}", file=sys.stderr)
        return 2


def entry() -> None:
    """The ``peftbench`` command (and ``python -m bench.cli``): ``main``, then leave at once.

    A normal interpreter exit tears down torch, transformers & co module by module: 1.4 s here
    after a suite, measured by timing the process past its last line. Everything this process
    writes is closed (``with`` blocks) and flushed by then, the run server exits when its pipe to
    us closes, and Ray is shut down explicitly; so what is left is flushing the standard streams.
    (Tests call ``main`` in-process and keep the normal exit.)"""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
