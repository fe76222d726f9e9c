"""peftbench: run suites of PEFT methods, report and list what is available.

    peftbench list                       # methods, tasks, models, suites (one line each)
    peftbench list --configs             # plus every method's config fields
    peftbench list --tasks bigbench      # BIG-bench's JSON tasks (bigbench:NAME), size, choices, kind
    peftbench serve-bench --out reports/serving   # N task artifacts on one base model, uniform / Zipf streams
    peftbench run                        # the default suite ("quick") -> results/quick/
    peftbench run lester --set steps=50  # a built-in suite or a suite.toml, with train overrides
    peftbench report results/quick --out reports/quick   # README.md + PNG figures
    peftbench compare results/quick other/quick          # markdown diff of two result sets
    peftbench doctor [--latest [--uncapped]]             # environment against the lock; upstream drift
    peftbench run big.toml --executor ray                # one Ray task per run, over a Ray cluster
    peftbench run quick --shard 2/8                      # shard 2 of 8 (e.g. a SLURM array task) ...
    peftbench merge results/quick/shard-*-of-8 --out results/quick   # ... joined afterwards
    accelerate launch --multi_gpu --num_processes 8 -m peft_bench.cli run big.toml   # each run on 8 GPUs (DDP)
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys

from peft_bench.cli.commands import (DEFAULT_SUITE, cmd_bench_overhead, cmd_compare, cmd_doctor, cmd_list,
                                     cmd_merge, cmd_report, cmd_run, cmd_serve_bench, cmd_switch)
from peft_bench.core.config import ConfigError, TrainConfig, UnknownName, describe


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peftbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"peftbench {_version()}",
                   help="print peft-bench's version and exit")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="methods, tasks, models and suites")
    ls.add_argument("--configs", action="store_true", help="also print every method's config fields")
    ls.add_argument("--tasks", metavar="FAMILY", help="list one family of tasks named FAMILY:NAME (e.g. bigbench: "
                                                      "its JSON tasks, with size, choices and kind; fetched once)")
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
    sb = sub.add_parser("serve-bench", help="serving at scale: N task artifacts on one base model, uniform and Zipf streams")
    sb.add_argument("--methods", default="prompt_tuning,prefix_tuning,lora", help="comma-separated methods")
    sb.add_argument("--model", default="minilm", help="a model, or several comma-separated")
    sb.add_argument("--task", default="sentiment")
    sb.add_argument("--ns", default="1,4,16,64", help="numbers of loaded tasks, comma-separated")
    sb.add_argument("--requests", type=int, default=256, help="requests per stream")
    sb.add_argument("--batch-size", type=int, default=16)
    sb.add_argument("--repeats", type=int, default=3, help="best of this many passes per serving mode")
    sb.add_argument("--artifact-budget-gib", type=float, default=8.0, metavar="GIB",
                    help="leave out an N whose artifacts exceed this on disk together (full fine-tuning: a model each)")
    sb.add_argument("--out", default="results/serving", metavar="DIR", help="folder of serving.jsonl, README.md and the figure")
    sb.add_argument("--report", metavar="DIR", help="only rewrite DIR's README.md and figure from its serving.jsonl")
    sb.add_argument("--force", action="store_true", help="measure again a model and method already in serving.jsonl")
    sb.set_defaults(func=cmd_serve_bench)
    sw = sub.add_parser("switch", help="measure task switching and serving on a suite's saved artifacts (no retraining)")
    sw.add_argument("results", help="results.jsonl, or a folder holding one (its artifacts must still be on disk)")
    sw.add_argument("--repeats", type=int, default=20, help="measured repeats per ordered task pair (after warm-up)")
    sw.add_argument("--force", action="store_true", help="measure again groups already measured")
    sw.add_argument("--no-isolate", dest="isolate", action="store_false", help="measure in this process")
    sw.set_defaults(func=cmd_switch)
    rep = sub.add_parser("report", help="write a markdown report from result records")
    rep.add_argument("results", help="results.jsonl, or a folder holding one")
    rep.add_argument("--out", default=None, help="report folder (default: next to the results)")
    rep.add_argument("--notes", default="", help="text placed under the title (kept in the report folder as NOTES.md, which later reports of the folder reuse)")
    rep.set_defaults(func=cmd_report)
    cmp = sub.add_parser("compare", help="markdown diff of two result sets: B/A per metric, flagged beyond the spread")
    cmp.add_argument("a", help="results.jsonl (or a folder holding one): the reference")
    cmp.add_argument("b", help="results.jsonl (or a folder holding one): compared against A")
    cmp.add_argument("--out", default=None, metavar="DIR",
                     help="folder to write compare.md into (default: print to standard output)")
    cmp.set_defaults(func=cmd_compare)
    ov = sub.add_parser("bench-overhead", help="the harness against a plain PyTorch + peft loop, transformers.Trainer "
                                               "and its own loop in-process, doing the same work in lockstep",
                        epilog=_train_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ov.add_argument("--model", default="minilm",
                    help="default: minilm (the plain loop runs on encoders; Trainer and isolation on any model)")
    ov.add_argument("--task", default="sentiment", help="default: sentiment (the plain loop needs a single-text task)")
    ov.add_argument("--methods", default="lora,prompt_tuning", help="comma-separated: lora, prompt_tuning")
    ov.add_argument("--repeats", type=int, default=5, help="pairs per method and reference (default 5)")
    ov.add_argument("--references", default="plain,trainer,isolation",
                    help="comma-separated: plain, trainer, isolation (default: all three)")
    ov.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a training setting (default: the quick suite's)")
    ov.add_argument("--suite", default=None,
                    help="instead: time `peftbench run SUITE --no-switch` against its runs' pure train + eval time")
    ov.add_argument("--out", default=None, metavar="DIR", help="also write the markdown to DIR/overhead.md")
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("peft-bench")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    from peft_bench.results.store import StoreBusy, StoreWriteError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork per run
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, UnknownName, FileNotFoundError, ValueError, StoreWriteError, StoreBusy) as e:
        # a user's error, in one line; anything else (a KeyError from a bug among them) keeps its traceback
        print(f"peftbench: error: {e}", file=sys.stderr)
        return 2


def entry() -> None:
    """The ``peftbench`` command (and ``python -m peft_bench.cli``): ``main``, then leave at once.

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
