"""Checks of the claims of Lester et al. (2021), "The Power of Scale for Parameter-Efficient Prompt
Tuning", on whatever result records hold the runs each claim needs.

The verdict is decided here, by ``RULE``, never by hand:

- Two variants are compared on a metric with ``peft_bench.results.aggregate.beats``: A is better than B when
  mean(A) - mean(B) exceeds the larger of their spreads (the std over seeds, or the standard error
  over test examples when a variant has one seed); worse when it is below minus that margin;
  otherwise the difference is within the spread.
- A claim is **supported** when every comparison it makes goes its way, **not supported** when any
  comparison goes against it beyond the spread, and **inconclusive** otherwise (some difference is
  within the spread).
- Parameter counts have no spread; "orders of magnitude fewer" means at least ``ORDER``x fewer.

Each check runs per (model, task) and returns None when the records lack the runs it needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from peft_bench.results.aggregate import beats

RULE = ("A variant beats another when its mean accuracy exceeds the other's by more than the larger "
        "of their spreads (std over seeds; the standard error over test examples for a single seed). "
        "A claim is **supported** when every comparison it makes goes its way beyond the spread, **not "
        "supported** when any comparison goes against it beyond the spread, and **inconclusive** "
        "otherwise. \"Orders of magnitude fewer parameters\" means at least 10x fewer trainable and "
        "stored parameters. Decided by `bench/studies/lester.py`.")
ORDER = 10
METHOD = "prompt_tuning"
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


@dataclass
class Claim:
    id: str
    statement: str
    model: str
    task: str
    verdict: str
    evidence: str


def _verdict(outcomes: list[int]) -> str:
    """+1 a comparison went the claim's way, -1 against it, 0 within the spread."""
    if any(o < 0 for o in outcomes):
        return NOT_SUPPORTED
    return SUPPORTED if all(o > 0 for o in outcomes) else INCONCLUSIVE


def _acc(r: pd.Series, metric: str) -> str:
    s = r[f"{metric}_spread"]
    return f"{r[metric]:.3f}" + ("" if math.isnan(s) else f" ± {s:.3f}") + f" (n={int(r['n'])})"


def _axis_rows(pt: pd.DataFrame, axis: str, values: tuple, prefer: dict) -> list[pd.Series] | None:
    """Prompt-tuning variants that differ only in ``axis`` and cover ``values``; among several such
    sets, the one matching ``prefer`` (the paper's setting for the other fields), else the first."""
    sets: dict[str, dict] = {}
    for _, r in pt.iterrows():
        cfg = r["config"]
        if cfg.get(axis) in values:
            rest = repr(sorted((k, v) for k, v in cfg.items() if k != axis))
            sets.setdefault(rest, {})[cfg.get(axis)] = r
    full = [s for s in sets.values() if all(v in s for v in values)]
    if not full:
        return None
    pick = next((s for s in full if all(s[values[0]]["config"].get(k) == v for k, v in prefer.items())), full[0])
    return [pick[v] for v in values]


def _fmt_pairs(pairs: list[tuple[str, pd.Series, str, pd.Series, tuple]], metric: str) -> str:
    words = {1: "better", -1: "worse", 0: "within the spread"}
    return "; ".join(f"{a_name} {_acc(a, metric)} vs {b_name} {_acc(b, metric)}: {o[1]:+.3f}, margin {o[2]:.3f}, "
                     f"{words[o[0]]}" for a_name, a, b_name, b, o in pairs)


def init_order(rows: pd.DataFrame, metric: str) -> tuple[str, str] | None:
    got = _axis_rows(rows[rows["method"] == METHOD], "init", ("class_label", "sample_vocab", "random"),
                     {"num_virtual_tokens": 20})
    if not got:
        return None
    cl, sv, rnd = got
    pairs = [("class_label", cl, "sample_vocab", sv, beats(cl, sv, metric)),
             ("sample_vocab", sv, "random", rnd, beats(sv, rnd, metric))]
    return (_verdict([p[4][0] for p in pairs]),
            f"at {cl['config'].get('num_virtual_tokens')} tokens: " + _fmt_pairs(pairs, metric))


def prompt_length(rows: pd.DataFrame, metric: str) -> tuple[str, str] | None:
    got = _axis_rows(rows[rows["method"] == METHOD], "num_virtual_tokens", (1, 20, 100), {"init": "class_label"})
    if not got:
        return None
    one, twenty, hundred = got
    clearly = beats(twenty, one, metric)
    gain = beats(hundred, twenty, metric)
    # part 2 ("little gain 20 -> 100") goes the claim's way unless 100 tokens beat 20 beyond the spread
    outcomes = [clearly[0], -1 if gain[0] > 0 else 1]
    return (_verdict(outcomes),
            f"init={twenty['config'].get('init')}: "
            + _fmt_pairs([("20 tokens", twenty, "1 token", one, clearly), ("100 tokens", hundred, "20 tokens", twenty, gain)],
                         metric))


def trails_full_finetuning(rows: pd.DataFrame, metric: str) -> tuple[str, str] | None:
    pt, ft = rows[rows["method"] == METHOD], rows[rows["method"] == "full_finetune"]
    if pt.empty or ft.empty:
        return None
    best_pt = pt.loc[pt[metric].idxmax()]  # the variant most favourable to prompt tuning
    ft = ft.loc[ft[metric].idxmax()]
    o = beats(ft, best_pt, metric)
    return (_verdict([o[0]]), _fmt_pairs([("full fine-tuning", ft, f"best {best_pt['label']}", best_pt, o)], metric))


def fewer_parameters(rows: pd.DataFrame, metric: str) -> tuple[str, str] | None:
    pt = rows[rows["method"] == METHOD]
    others = rows[rows["method"].isin(["full_finetune", "lora"])]
    if pt.empty or others.empty:
        return None
    outcomes, parts = [], []
    for _, o in others.iterrows():
        ratios = []
        for _, p in pt.iterrows():
            rt = o["trainable_params"] / p["trainable_params"]
            rs = o["stored_params"] / p["stored_params"] if p["stored_params"] else rt
            ratios.append((min(rt, rs), p))
        outcomes += [1 if r >= ORDER else -1 for r, _ in ratios]
        lo, hi = min(ratios, key=lambda x: x[0]), max(ratios, key=lambda x: x[0])
        short = [f"{p['label']} only {r:,.1f}x" for r, p in ratios if r < ORDER]
        parts.append(f"vs {o['label']} ({o['trainable_params']:,.0f} trainable / {o['stored_params']:,.0f} stored): "
                     f"{lo[0]:,.0f}x ({lo[1]['label']}, {lo[1]['trainable_params']:,.0f}) to {hi[0]:,.0f}x "
                     f"({hi[1]['label']}, {hi[1]['trainable_params']:,.0f}) fewer"
                     + (f"; short of {ORDER}x: " + ", ".join(short) if short else ""))
    return _verdict(outcomes), "; ".join(parts)


CHECKS = [
    ("a", "Prompt initialisation: class-label init ≥ sampled-vocabulary init ≥ random init.", init_order),
    ("b", "Prompt length: 1 token is clearly worse than 20; going from 20 to 100 tokens gains little.", prompt_length),
    ("c", "At this model size, prompt tuning trails full fine-tuning.", trails_full_finetuning),
    ("d", "Prompt tuning trains and stores orders of magnitude fewer parameters than full fine-tuning and LoRA.",
     fewer_parameters),
]


def check_claims(summary: pd.DataFrame, metric: str = "accuracy") -> list[Claim]:
    """Every claim that the summary (``peft_bench.results.aggregate.summarize``) holds the runs for, per model and task."""
    out = []
    if summary.empty or metric not in summary:
        return out
    for (model, task), rows in summary.groupby(["model", "task"], sort=True):
        for cid, statement, fn in CHECKS:
            got = fn(rows, metric)
            if got is not None:
                out.append(Claim(cid, statement, model, task, got[0], got[1]))
    return out


def report_section(summary: pd.DataFrame, metric: str = "accuracy") -> str:
    """The report section of this study: every claim's verdict on the runs of ``summary``."""
    from tabulate import tabulate

    claims = check_claims(summary, metric)
    if not claims:
        return ""
    rows = [{"claim": f"({c.id}) {c.statement}", "model / task": f"{c.model} / {c.task}", "verdict": f"**{c.verdict}**",
             "numbers": c.evidence} for c in claims]
    steps = sorted({int(x) for x in summary.get("steps", pd.Series(dtype=float)).dropna()})
    scope = ("Scope: these verdicts are about this setting only — "
             + (f"{', '.join(map(str, steps))} training steps, " if steps else "")
             + f"{int(summary['n'].max())} seed(s) per variant, the models and tasks named in each row. The paper "
             "trained T5 models of up to 11B parameters for 30,000 steps; a claim that does not hold here may hold "
             "there, and with two seeds a standard deviation is itself a rough estimate.")
    return ("## Claims of Lester et al. (2021), checked on these runs\n\n" + RULE + "\n\n" + scope + "\n\n"
            + tabulate(pd.DataFrame(rows), headers="keys", tablefmt="github", showindex=False, disable_numparse=True)
            + "\n")
