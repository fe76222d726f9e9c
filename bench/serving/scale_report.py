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
from peft_bench.results.store import append_line, read_json_lines
from peft_bench.serving.scale import LAWS, NS, scale_study
from peft_bench.results.tables import md_table
from peft_bench.results.units import fmt_bytes

# what a row must hold for a page (rows of an older serve-bench lack some)
REQUIRED = ("repeats", "artifact_tensor_bytes", "resident_bytes", "tensor_per_task_bytes", "python_bytes_per_load")


def run_scale(methods: list[str], model: str | list[str], task: str, out: Path, ns=NS, requests: int = 256,
              batch_size: int = 16, repeats: int = 3, max_length: int = 64, budget_bytes: float = 8 * 2**30,
              force: bool = False, log=print) -> Path:
    """The study for every (model, method) into ``out/serving.jsonl``: each method's rows appended
    as soon as it is measured (a stopped command loses at most the method in progress), a pair
    already there skipped unless ``force`` (then its rows are replaced); README rewritten each time
    from all the rows. Rows measured with other settings are refused, not mixed into one page."""
    import torch

    from peft_bench.assets import models
    from peft_bench.core.config import TrainConfig
    from peft_bench.core.environment import environment
    from peft_bench.core.spec import RunSpec
    from peft_bench.engine.prepare import prepare

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "serving.jsonl"
    settings = {"requests": requests, "batch_size": batch_size, "repeats": repeats}
    have = read_json_lines(data)
    model_names = [model] if isinstance(model, str) else list(model)
    for name_model in model_names:  # one model's rows, one set of settings
        for k, v in settings.items():
            other = sorted({r.get(k) for r in have if r["model"] == name_model} - {v}, key=str)
            if other:
                raise ValueError(f"{data} holds rows of {name_model} measured with {k} = {other[0]}, not {v}: use "
                                 f"another --out, or the same settings.")
    command = "peftbench " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    commands = _commands(out)
    if command and command not in commands:
        write_whole(out / "COMMAND", lambda p: p.write_text("\n".join(commands + [command]) + "\n"))
    for name_model in model_names:
        for name in methods:
            pair = (name_model, task, name)
            if any((r["model"], r["task"], r["method"]) == pair for r in have):
                if not force:
                    log(f"{name} on {name_model} / {task}: in {data} already (--force measures it again)")
                    continue
                have = [r for r in have if (r["model"], r["task"], r["method"]) != pair]
                write_whole(data, lambda p: p.write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in have)))
            log(f"{name} on {name_model} / {task}: up to {max(ns)} artifacts, N in {list(ns)}")
            spec = RunSpec(model=name_model, task=task, method=name, train=TrainConfig(
                steps=1, batch_size=8, n_train=64, n_test=min(requests, 256), max_length=max_length, eval_points=0,
                num_threads=torch.get_num_threads())).resolve()
            run = prepare(spec)
            mspec = models.resolve(name_model)
            with tempfile.TemporaryDirectory(prefix="pb-scale-") as tmp:
                rows = scale_study(run, lambda: models.load(mspec, run.task.num_labels).model, Path(tmp), ns=ns,
                                   requests=requests, batch_size=batch_size, repeats=repeats,
                                   budget_bytes=budget_bytes, log=log)
            env = environment(run.device)
            for r in rows:
                line = {"method": name, "model": name_model, "task": task, "device": run.device.type, **r,
                        "repeats": repeats, "env": env, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                append_line(data, json.dumps(line, sort_keys=True))
                have.append(line)
            write_report(have, out, "\n".join(_commands(out)))
    return out / "README.md"


def _commands(out: Path) -> list[str]:
    path = out / "COMMAND"
    return [c for c in path.read_text().splitlines() if c.strip()] if path.is_file() else []


def rewrite_report(out: Path) -> Path:
    """README.md and the figure again from ``out/serving.jsonl`` (no measurement)."""
    out = Path(out)
    lines = read_json_lines(out / "serving.jsonl")
    old = sorted({k for r in lines for k in REQUIRED if k not in r})
    if old:
        raise ValueError(f"{out / 'serving.jsonl'} has rows without {old}: measured by an older serve-bench; "
                         f"measure them again (--force).")
    write_report(lines, out, "\n".join(_commands(out)))
    return out / "README.md"


def _ratio(x) -> str:
    return f"{x:.3f}" if x is not None else "n/a"


def _per_task(r: dict, key: str) -> str:
    v = r.get(key)
    return f"{fmt_bytes(v)} ({v / _weights(r):.2f}x)" if v is not None else "—"


def _weights(r: dict) -> int:
    return r["artifact_tensor_bytes"]


def write_report(lines: list[dict], out: Path, command: str = "") -> None:
    first = lines[0]
    models = list(dict.fromkeys(r["model"] for r in lines))
    text = [f"# Serving at scale: {', '.join(models)} / {first['task']}", "",
            f"N task artifacts on one frozen base model; a stream of requests whose tasks are drawn uniformly or "
            f"with Zipf (alpha 1) popularity over the N tasks (the workloads of S-LoRA and Punica), in batches, on "
            f"{first['device']} (each model's section gives its stream length, batch size and passes). Served three "
            f"ways, best of the passes: mixed batches (each row by its own task's artifact, one forward), "
            f"grouped by task (a switch and a forward per task in a batch), and every request by one artifact (the "
            f"baseline). Where a method's mixed path is written here in place of its library's own (LoRA: rows "
            f"gather their A and B from per-layer banks; peft loops over the batch's adapters in every layer), the "
            f"library's path is timed in the same run (\"library's mixed / one\"). Latency: per batch (a request "
            f"waits for its batch), on the mixed path where the method has one, else grouped.", "",
            "Memory per task: the growth of resident memory (CUDA: allocated) from the smallest N, divided by the "
            "tasks added, each taken after that N's streams were served (banks built, freed memory returned), "
            "beside the bytes of the artifact's weights (the ratio in brackets; on disk the artifact also holds "
            "its config, and peft's a model card). Live tensors: the same growth counted "
            "over every distinct tensor storage Python can reach (the garbage collector's view of the process, "
            "not the method's own account). Python objects: what Python's allocator keeps after loading one "
            "artifact again (tracemalloc): modules, dictionaries, configs. Full fine-tuning stores a whole model "
            "per task: its N stops where the artifacts would pass the disk budget.", "",
            "The artifacts are each method's own initialisation with its trainable weights perturbed per task "
            "(seeded), saved and loaded like trained ones: serving cost does not depend on what they learned.", ""]
    if command:
        text += ["Measured with", "", *[f"    {c}" for c in command.splitlines()], "",
                 f"The rows are in `serving.jsonl`; this page is rewritten from them by "
                 f"`peftbench serve-bench --report {out}`.", ""]
    summary = []
    for model in models:
        for method in dict.fromkeys(r["method"] for r in lines if r["model"] == model):
            rows = [r for r in lines if r["model"] == model and r["method"] == method]
            top = max(r["n_tasks"] for r in rows)
            at = {r["law"]: r for r in rows if r["n_tasks"] == top}
            u, z = at.get("uniform", {}), at.get("zipf", {})
            row = u or z
            summary.append({
                "model": model, "method": method, "N": top, "artifact weights (on disk)": f"{fmt_bytes(_weights(row))} ({fmt_bytes(row['artifact_bytes'])})",
                "mixed / one (uniform, zipf)": f"{_ratio(u.get('mixed_over_single'))}, {_ratio(z.get('mixed_over_single'))}",
                "library's mixed / one": f"{_ratio(u.get('mixed_reference_over_single'))}, "
                                         f"{_ratio(z.get('mixed_reference_over_single'))}"
                if row.get("mixed_reference_over_single") is not None else "",
                "grouped / one": f"{_ratio(u.get('grouped_over_single'))}, {_ratio(z.get('grouped_over_single'))}",
                "memory per task": _per_task(row, "resident_per_task_bytes"),
                "live tensors per task": _per_task(row, "tensor_per_task_bytes"),
                "Python objects per load": fmt_bytes(row["python_bytes_per_load"])
                if row["python_bytes_per_load"] is not None else "—"})
    text += ["## At the largest N", "", md_table(summary, keep=("model", "method")), ""]
    for model in models:
        at_model = [r for r in lines if r["model"] == model]
        figure = f"throughput-{model}.png"
        text += [f"## {model}", "", f"Streams of {at_model[0]['requests']} requests in batches of "
                                    f"{at_model[0]['batch_size']}, best of {at_model[0]['repeats']} passes "
                                    f"per serving mode.", "", f"![Throughput of mixed and grouped serving over one artifact's, and memory per "
                                    f"task, against N, on {model}]({figure})", ""]
        _figure(at_model, out / figure)
        for method in dict.fromkeys(r["method"] for r in at_model):
            text += _method_section(method, [r for r in at_model if r["method"] == method])
    write_whole(out / "README.md", lambda p: p.write_text("\n".join(text)))


def _method_section(method: str, rows: list[dict]) -> list[str]:
    art, last = rows[0]["artifact_bytes"], rows[-1]  # the cold-load figures cover every artifact at the largest N
    text = [f"### {rows[0]['model']} / {method}", "",
            f"Artifact: {fmt_bytes(_weights(rows[0]))} of weights, {fmt_bytes(art)} on disk; cold load median {last['cold_load_median_s'] * 1e3:.1f} ms "
            f"(p90 {last['cold_load_p90_s'] * 1e3:.1f} ms) over {last['n_tasks']} artifacts.", ""]
    table = [{"N": r["n_tasks"], "popularity": r["law"], "tasks in stream": r["distinct_tasks"],
              "one artifact (ex/s)": f"{r['single_task_examples_per_s']:.1f}",
              "mixed / one": _ratio(r["mixed_over_single"]),
              "library's mixed / one": _ratio(r.get("mixed_reference_over_single")),
              "grouped / one": f"{r['grouped_over_single']:.3f}",
              "batch latency p50 / p90": f"{r['latency_p50_s'] * 1e3:.1f} / {r['latency_p90_s'] * 1e3:.1f} ms ({r['latency_path']})"}
             for r in rows]
    if all(r.get("mixed_reference_over_single") is None for r in rows):
        table = [{k: v for k, v in t.items() if k != "library's mixed / one"} for t in table]
    text += [md_table(table, keep=("N", "popularity")), ""]
    mem = [{"N": r["n_tasks"], "resident": fmt_bytes(r["resident_bytes"]),
            "memory per task": _per_task(r, "resident_per_task_bytes"),
            "live tensors per task": _per_task(r, "tensor_per_task_bytes")}
           for r in rows if r["law"] == rows[0]["law"]]  # memory is taken once per N, for both laws
    text += [md_table(mem, keep=("N",)), ""]
    why = next((r.get("mixed_unsupported") for r in rows if r.get("mixed_unsupported")), None)
    if why:
        text += [f"Mixed batches n/a: {why}", ""]
    return text


def _figure(lines: list[dict], path: Path) -> None:
    """Throughput over one artifact's against N (a panel per popularity law), and memory per task
    over the artifact's bytes."""
    from peft_bench.results.plots import method_colour

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in lines))
    fig, axes = plt.subplots(1, len(LAWS) + 1, figsize=(14, 3.9))
    for ax, law in zip(axes, LAWS):
        for method in methods:
            rows = sorted((r for r in lines if r["method"] == method and r["law"] == law), key=lambda r: r["n_tasks"])
            xs = [r["n_tasks"] for r in rows]
            if all(r["mixed_over_single"] is not None for r in rows):
                ax.plot(xs, [r["mixed_over_single"] for r in rows], "o-", color=method_colour(method), label=f"{method} mixed")
            if all(r.get("mixed_reference_over_single") is not None for r in rows):
                ax.plot(xs, [r["mixed_reference_over_single"] for r in rows], "^:", color=method_colour(method),
                        label=f"{method} library's mixed")
            ax.plot(xs, [r["grouped_over_single"] for r in rows], "s--", color=method_colour(method), alpha=0.6,
                    label=f"{method} grouped")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tasks loaded, N (log scale)")
        ax.set_title(f"throughput / one artifact, {law} popularity", fontsize=9)
        ax.axhline(1.0, color="0.6", lw=0.8)
    axes[0].legend(fontsize=6, loc="lower left")
    ax = axes[-1]
    for method in methods:
        rows = sorted((r for r in lines if r["method"] == method and r["law"] == LAWS[0]
                       and r.get("resident_per_task_bytes") is not None), key=lambda r: r["n_tasks"])
        if rows:
            xs = [r["n_tasks"] for r in rows]
            ax.plot(xs, [r["resident_per_task_bytes"] / _weights(r) for r in rows], "o-", color=method_colour(method),
                    label=f"{method} resident")
            ax.plot(xs, [r["tensor_per_task_bytes"] / _weights(r) for r in rows], "x:", color=method_colour(method),
                    label=f"{method} live tensors")
    ax.axhline(1.0, color="0.6", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tasks loaded, N (log scale)")
    ax.set_title("memory per task / artifact's weights (1 = one artifact)", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
