"""``peftbench serve-bench``: the serving study at scale (``serving.scale``) for several methods on
one model and task, written as ``serving.jsonl`` (one line per method, N and popularity law) and
a README with a table per method and a figure of throughput against N."""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from peft_bench.core.paths import write_whole
from peft_bench.serving.scale import LAWS, NS, scale_study
from peft_bench.results.tables import md_table
from peft_bench.results.units import fmt_bytes


def run_scale(methods: list[str], model: str, task: str, out: Path, ns=NS, requests: int = 256,
              batch_size: int = 16, repeats: int = 3, max_length: int = 64, log=print) -> Path:
    import torch

    from peft_bench.assets import models
    from peft_bench.core.config import TrainConfig
    from peft_bench.core.environment import environment
    from peft_bench.core.spec import RunSpec
    from peft_bench.engine.prepare import prepare

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for name in methods:
        log(f"{name} on {model} / {task}: {max(ns)} artifacts, N in {list(ns)}")
        spec = RunSpec(model=model, task=task, method=name, train=TrainConfig(
            steps=1, batch_size=8, n_train=64, n_test=min(requests, 256), max_length=max_length, eval_points=0,
            num_threads=torch.get_num_threads())).resolve()
        run = prepare(spec)
        mspec = models.resolve(model)
        with tempfile.TemporaryDirectory(prefix="pb-scale-") as tmp:
            rows = scale_study(run, lambda: models.load(mspec, run.task.num_labels).model, Path(tmp), ns=ns,
                               requests=requests, batch_size=batch_size, repeats=repeats, log=log)
        env = environment(run.device)
        for r in rows:
            lines.append({"method": name, "model": model, "task": task, "device": run.device.type, **r,
                          "env": env, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    data = out / "serving.jsonl"
    write_whole(data, lambda p: p.write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in lines)))
    command = "peftbench " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    write_whole(out / "COMMAND", lambda p: p.write_text(command + "\n"))
    write_report(lines, out, command)
    return out / "README.md"


def rewrite_report(out: Path) -> Path:
    """README.md and the figure again from ``out/serving.jsonl`` (no measurement)."""
    out = Path(out)
    lines = [json.loads(x) for x in (out / "serving.jsonl").read_text().splitlines() if x.strip()]
    command = (out / "COMMAND").read_text().strip() if (out / "COMMAND").is_file() else ""
    write_report(lines, out, command)
    return out / "README.md"


def write_report(lines: list[dict], out: Path, command: str = "") -> None:
    from peft_bench.results.plots import method_colour

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = lines[0]
    text = [f"# Serving at scale: {first['model']} / {first['task']}", "",
            f"N task artifacts on one frozen base model; a stream of {first['requests']} requests whose tasks are "
            f"drawn uniformly or with Zipf (alpha 1) popularity over the N tasks (the workloads of S-LoRA and "
            f"Punica), in batches of {first['batch_size']}. Served three ways, best of the repeats: mixed batches "
            f"(each row by its own task's artifact, one forward), grouped by task (a switch and a forward per task "
            f"in a batch), and every request by one artifact (the baseline). Latency: per batch (a request waits "
            f"for its batch), on the mixed path where the method has one, else grouped. Memory is not shown yet: "
            f"the recorded resident memory above the base model was taken without a warm baseline, so it holds the "
            f"allocator's working set of the first batches (0 B at N = 1, tens of MiB at N = 4), not the cost per "
            f"task (`memory_above_base_bytes` in serving.jsonl, kept as measured). "
            f"The artifacts are each method's own initialisation with its trainable weights perturbed per task "
            f"(seeded), saved and loaded like trained ones: serving cost does not depend on what they learned.", ""]
    if command:
        text += [f"Measured with `{command}`; the rows are in `serving.jsonl`; this page is rewritten from them by "
                 f"`peftbench serve-bench --report {out}`.", ""]
    for method in dict.fromkeys(r["method"] for r in lines):
        rows = [r for r in lines if r["method"] == method]
        art, last = rows[0]["artifact_bytes"], rows[-1]  # the cold-load figures cover every artifact at the largest N
        text += [f"## {method}", "",
                 f"Artifact {fmt_bytes(art)} on disk; cold load median {last['cold_load_median_s'] * 1e3:.1f} ms "
                 f"(p90 {last['cold_load_p90_s'] * 1e3:.1f} ms) over {last['n_tasks']} artifacts.", ""]
        table = [{"N": r["n_tasks"], "popularity": r["law"], "tasks in stream": r["distinct_tasks"],
                  "one artifact (ex/s)": f"{r['single_task_examples_per_s']:.1f}",
                  "mixed / one": f"{r['mixed_over_single']:.3f}" if r["mixed_over_single"] is not None else "n/a",
                  "grouped / one": f"{r['grouped_over_single']:.3f}",
                  "batch latency p50 / p90": f"{r['latency_p50_s'] * 1e3:.1f} / {r['latency_p90_s'] * 1e3:.1f} ms ({r['latency_path']})"}
                 for r in rows]
        text += [md_table(table, keep=("N", "popularity")), ""]
        why = next((r.get("mixed_unsupported") for r in rows if r.get("mixed_unsupported")), None)
        if why:
            text += [f"Mixed batches n/a: {why}", ""]
    fig, axes = plt.subplots(1, len(LAWS), figsize=(10, 3.8), sharey=True)
    for ax, law in zip(axes, LAWS):
        for method in dict.fromkeys(r["method"] for r in lines):
            rows = sorted((r for r in lines if r["method"] == method and r["law"] == law), key=lambda r: r["n_tasks"])
            xs = [r["n_tasks"] for r in rows]
            if all(r["mixed_over_single"] is not None for r in rows):
                ax.plot(xs, [r["mixed_over_single"] for r in rows], "o-", color=method_colour(method), label=f"{method} mixed")
            ax.plot(xs, [r["grouped_over_single"] for r in rows], "s--", color=method_colour(method), alpha=0.6,
                    label=f"{method} grouped")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tasks loaded, N (log scale)")
        ax.set_title(f"{law} popularity")
        ax.axhline(1.0, color="0.6", lw=0.8)
    axes[0].set_ylabel("throughput / one artifact")
    axes[-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)
    text += ["![Throughput of mixed and grouped serving over one artifact's, against N](throughput.png)", ""]
    write_whole(out / "README.md", lambda p: p.write_text("\n".join(text)))
