"""The commands of ``peftbench`` (one function each; the parser is in ``peft_bench.cli``)."""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

from peft_bench.core.paths import write_whole
from peft_bench.core.config import describe, parse_overrides

DEFAULT_SUITE = "quick"


def cmd_list(args: argparse.Namespace) -> int:
    from peft_bench.assets import models
    from peft_bench.core.registry import METHODS, MODELS, TASKS, load_builtin_plugins
    from peft_bench.core.suite import builtin_suites

    load_builtin_plugins()
    if args.tasks:
        lines = TASKS.family_listing(args.tasks.rstrip(":"))
        print("\n".join([f"tasks {args.tasks.rstrip(':')}:NAME:", *lines]))
        return 0
    print("methods:")
    for name in METHODS.names():
        cls = METHODS.get(name)
        if cls.unavailable:
            print(f"  {name:<20} NOT RUNNABLE: {cls.unavailable} ({cls.description})")
            continue
        only = f" [{' and '.join(cls.model_kinds)} models only: {cls.kind_reason}]" if cls.kind_reason else ""
        print(f"  {name:<20} {cls.description}{only}")
        if args.configs:
            for f, t, d, h in describe(cls.config_cls):
                print(f"      {f} ({t}, default {d!r}): {h}")
    _broken(METHODS)
    print("tasks:")
    for name in TASKS.names():
        t = TASKS.get(name)
        answers = f"labels: {', '.join(t.label_words)}" if t.objective == "classify" else f"objective: {t.objective}"
        print(f"  {name:<20} {t.description}; {answers}; metrics: {', '.join(t.metrics)}")
    _broken(TASKS)
    for fam in TASKS.families():
        print(f"  {fam + ':NAME':<20} a family of tasks: `peftbench list --tasks {fam}` lists them")
    print("models:")
    for name, desc in models.describe_all():
        print(f"  {name:<20} {desc}")
    _broken(MODELS)
    print("  (or any Hugging Face model id or local model folder)")
    print("suites:")
    for s in builtin_suites():
        print(f"  {s}{' (default)' if s == DEFAULT_SUITE else ''}")
    return 0


def _broken(registry) -> None:
    for name in sorted(registry.broken):
        print(f"  {name:<20} BROKEN: cannot be loaded (see the warning above); left out")


def cmd_run(args: argparse.Namespace) -> int:
    from peft_bench import api
    from peft_bench.engine import distributed

    say = lambda m: print(m, flush=True)  # noqa: E731
    mode = "force" if args.force else "rerun_failed" if args.rerun_failed else "resume"
    result = api.run(args.suite, args.out, parse_overrides(args.set), mode=mode, executor=args.executor,
                     isolate=args.isolate, switch=args.switch, timeout_s=args.timeout, shard=args.shard,
                     dry_run=args.dry_run, ray_address=args.ray_address, cpus_per_run=args.cpus_per_run,
                     gpus_per_run=args.gpus_per_run,
                     command=("peftbench run " + " ".join(shlex.quote(a) for a in sys.argv[2:])).strip(), log=say)
    if args.dry_run:
        return 0
    if result.report_error:
        print(f"peftbench: error: {result.report_error}", file=sys.stderr)
    if distributed.is_main():
        _summary(result.outcome, result.results, say)
    return result.exit_code


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
    from peft_bench.results.store import merge_stores

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
    from peft_bench.serving.suite import run_switch
    from peft_bench.results.store import read_records, store_file

    path = store_file(args.results, "`results`")
    res = run_switch(read_records(path), path.parent, repeats=args.repeats, force=args.force,
                     isolate=args.isolate, log=lambda m: print(m, flush=True))
    print(f"{len(res)} measurement(s) appended to {path.parent / 'switch.jsonl'}; "
          f"`peftbench report {path.parent}` shows them")
    return 1 if any(r.get("status") != "ok" for r in res) else 0


NOTES_FILE = "NOTES.md"  # beside a report's README: the text under its title (`peftbench report --notes`)


def cmd_report(args: argparse.Namespace) -> int:
    from peft_bench.results.report import write_report
    from peft_bench.core.suite import load_suite
    from peft_bench.results.store import read_json_lines, read_records, store_file

    path = store_file(args.results, "`results`")
    records = read_records(path)
    out = Path(args.out) if args.out else path.parent
    out.mkdir(parents=True, exist_ok=True)
    if (out / "results.jsonl").resolve() != path.resolve():
        shutil.copyfile(path, out / "results.jsonl")  # the report folder holds its own records
        if (path.parent / "switch.jsonl").exists():
            shutil.copyfile(path.parent / "switch.jsonl", out / "switch.jsonl")
        if (path.parent / "predictions").is_dir():  # the records name them relative to their folder
            shutil.copytree(path.parent / "predictions", out / "predictions", dirs_exist_ok=True)
    suites = list(dict.fromkeys(r.run.suite for r in records if r.run.suite)) or [path.parent.name]
    cmd = f"peftbench report {out / 'results.jsonl'} --out {out}"
    described, studies = [], ()
    for suite in suites:
        try:  # the suites of the records (built-in names): their descriptions and studies
            spec = load_suite(suite)
            described.append((suite, spec.description))
            studies = tuple(dict.fromkeys((*studies, *spec.studies)))
        except ValueError:
            pass
    notes_file = out / NOTES_FILE  # a report's own notes stay with it: the reproduce command keeps them
    if args.notes:
        notes_file.write_text(args.notes.rstrip() + "\n")
    notes = args.notes or (notes_file.read_text().strip() if notes_file.is_file() else "")
    if not notes and described:
        runs = ", ".join(f"`peftbench run {s}`" for s, _ in described)
        notes = (described[0][1] if len(described) == 1 else "\n\n".join(f"**{s}**: {d}" for s, d in described)) \
            + f"\n\nThe records come from {runs}" + (" (the stores joined with `peftbench merge`)." if len(described) > 1 else ".")
    report = write_report(records, out, f"peft-bench report: {suites[0] if len(suites) == 1 else ' + '.join(suites)}", cmd, notes=notes,
                          switch=read_json_lines(out / "switch.jsonl"), studies=studies)
    print(f"wrote {report} ({len(records)} records; figures, index.html, summary.csv and summary.parquet beside it)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from peft_bench.results.compare import compare_markdown, load

    a_records, a_switch, a_path = load(args.a)
    b_records, b_switch, b_path = load(args.b)
    text = compare_markdown(a_records, b_records, str(a_path), str(b_path), a_switch, b_switch)
    if not args.out:  # nothing written unasked: the diff goes to standard output
        print(text)
        return 0
    out = Path(args.out) / "compare.md"  # --out is a folder, as for every command
    out.parent.mkdir(parents=True, exist_ok=True)
    write_whole(out, lambda f: f.write_text(text))
    print(f"wrote {out}")
    return 0


def cmd_serve_bench(args: argparse.Namespace) -> int:
    from peft_bench.core.registry import load_builtin_plugins
    from peft_bench.serving.scale_report import rewrite_report, run_scale

    if args.report:
        print(f"wrote {rewrite_report(Path(args.report))}")
        return 0
    load_builtin_plugins()
    try:
        ns = tuple(sorted({int(x) for x in args.ns.split(",")}))
    except ValueError:
        raise SystemExit(f"peftbench: error: --ns must be comma-separated integers, got {args.ns!r}.") from None
    if not ns or ns[0] < 1:
        raise SystemExit(f"peftbench: error: --ns must be at least 1, got {args.ns!r}.")
    if not args.artifact_budget_gib > 0:
        raise SystemExit(f"peftbench: error: --artifact-budget-gib must be positive, got {args.artifact_budget_gib}.")
    report = run_scale([m.strip() for m in args.methods.split(",") if m.strip()],
                       [m.strip() for m in args.model.split(",") if m.strip()], args.task, Path(args.out),
                       ns=ns, requests=args.requests, batch_size=args.batch_size, repeats=args.repeats,
                       budget_bytes=args.artifact_budget_gib * 2**30, force=args.force,
                       log=lambda m: print(m, flush=True))
    print(f"wrote {report} (serving.jsonl and a figure per model beside it)")
    return 0


def cmd_bench_overhead(args: argparse.Namespace) -> int:
    from peft_bench.studies.overhead import LOCKSTEPS, PLAIN_METHODS, markdown, measure, suite_overhead
    from peft_bench.core.spec import RunSpec
    from peft_bench.core.suite import load_suite

    log = lambda m: print(m, flush=True)  # noqa: E731
    parts = []
    if args.suite:
        parts.append(suite_overhead(args.suite, log=log, sets=args.set))
    else:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        bad = [m for m in methods if m not in PLAIN_METHODS]
        if bad:
            raise ValueError(f"`--methods` must be among {', '.join(PLAIN_METHODS)} (the plain loop's methods), got {bad}.")
        refs = [r.strip() for r in args.references.split(",") if r.strip()]
        known = [k for k, _ in LOCKSTEPS]
        if not refs or any(r not in known for r in refs):
            raise ValueError(f"`--references` must be among {', '.join(known)}, got {args.references!r}.")
        # the default suite's training settings and method configs, unless overridden
        base = {(r.method, r.task): r for r in load_suite("quick", parse_overrides(args.set)).runs}
        specs = {}
        for m in methods:
            ref = base.get((m, args.task)) or next(r for r in base.values() if r.method == m)
            specs[m] = RunSpec(model=args.model, task=args.task, method=m, method_config=ref.method_config,
                               train=ref.train, suite="bench-overhead")
        pairs = measure(specs, args.repeats, log=log, references=refs)
        parts.append(markdown(pairs, next(iter(specs.values())), args.repeats))
    text = "\n".join(parts)
    print(text)
    if args.out:  # a folder, as for every command
        out = Path(args.out) / "overhead.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_whole(out, lambda f: f.write_text(text))
        print(f"wrote {out}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from peft_bench.cli import doctor

    if args.latest:
        return doctor.latest(uncapped=args.uncapped, venv=Path(args.venv) if args.venv else None,
                             log=lambda m: print(m, flush=True))
    return doctor.check_lock()
