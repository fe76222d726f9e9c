"""Checks of the claims of Lester et al. (2021), "The Power of Scale for Parameter-Efficient Prompt
Tuning", on whatever result records hold the runs each claim needs.

The verdict is decided here, by ``RULE``, never by hand, from the paired statistics of
``results.stats`` on the runs' per-example test predictions (``results.aggregate.compare_pair``):

- "A > B" (clearly better, trails): the paired difference A - B with its 95% CI and p-value,
  Holm-corrected over the claim's comparisons: "better" only when significant;
- "A ≥ B" and "little gain from A to B": non-inferiority against ``MARGIN`` (A - B ≥ -MARGIN, or
  B - A ≤ MARGIN), decided by the whole 95% CI: an interval wider than the margin is inconclusive;
- a claim is **supported** when every comparison goes its way, **not supported** when one goes
  against it (significantly, or inferior), **inconclusive** otherwise, and whenever a variant has
  no per-example predictions (no paired test is possible);
- variants are chosen on validation, never on test (claim c's "best prompt-tuning variant");
- parameter counts are exact: "orders of magnitude fewer" means at least ``ORDER``x fewer.

Each check runs per (model, task) (claim e per model family and task) and returns None when the
records lack the runs it needs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pandas as pd

from peft_bench.results import stats
from peft_bench.results.aggregate import compare_pair
from peft_bench.results.tables import md_table

MARGIN = 0.01  # accuracy points (as a fraction) a "≥" or "little gain" claim tolerates
ORDER = 10
METHOD = "prompt_tuning"
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
RULE = (f"Every comparison is paired on the same test examples (exact McNemar test for one seed each, paired "
        f"bootstrap over examples and seeds for several) and given as the difference with its 95% CI. \"A > B\": "
        f"A is significantly better (p < 0.05 after Holm's correction over the claim's comparisons). \"A ≥ B\" and "
        f"\"little gain\": non-inferiority with a margin of {MARGIN * 100:g} accuracy point: the whole CI of A − B "
        f"lies above −{MARGIN:g} (or of the gain, below +{MARGIN:g}); a CI wider than that is **inconclusive**, never "
        "**supported**. A claim is **supported** when every comparison goes its way, **not supported** when one goes "
        "against it, **inconclusive** otherwise. Variants are chosen on validation accuracy, never on test. \"Orders of "
        f"magnitude fewer parameters\" means at least {ORDER}x fewer. Decided by `bench/studies/lester.py`.")


@dataclass
class Claim:
    id: str
    statement: str
    model: str
    task: str
    verdict: str
    evidence: str


def _acc(r: pd.Series) -> str:
    lo, hi = r.get("accuracy_low", math.nan), r.get("accuracy_high", math.nan)
    ci = "" if math.isnan(lo) else f" [{lo:.3f}, {hi:.3f}]"
    return f"{r['accuracy']:.3f}{ci} (n={int(r['n'])})"


def _ratio(x: float) -> str:
    """A parameter ratio, with a decimal where rounding could hide that it is short of ``ORDER``."""
    return f"{x:,.1f}x" if x < 100 else f"{x:,.0f}x"


def _ci(d: stats.Estimate) -> str:
    return f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"


@dataclass
class Test:
    """One comparison of a claim: a - b, tested for ``kind`` ("better": a significantly better;
    "noninferior": a - b >= -MARGIN), with its names for the evidence."""

    a_name: str
    a: pd.Series
    b_name: str
    b: pd.Series
    kind: str

    def __post_init__(self):
        self.diff = compare_pair(self.a.get("correct"), self.b.get("correct"))


def _decide(tests: list[Test]) -> tuple[str, str]:
    """The claim's verdict from its comparisons, and the evidence text."""
    if any(t.diff is None for t in tests):
        missing = sorted({n for t in tests for n, r in ((t.a_name, t.a), (t.b_name, t.b)) if r.get("correct") is None})
        return INCONCLUSIVE, ("no per-example predictions for " + ", ".join(missing) + ": no paired test; "
                              + "; ".join(f"{t.a_name} {_acc(t.a)} vs {t.b_name} {_acc(t.b)}" for t in tests))
    adjusted = stats.holm([t.diff.p_value for t in tests])
    outcomes, parts = [], []
    for t, p in zip(tests, adjusted):
        if t.kind == "better":
            v = stats.verdict(t.diff, p_adjusted=p)
            outcomes.append({stats.BETTER: 1, stats.WORSE: -1}.get(v, 0))
        else:
            v = stats.non_inferiority(t.diff, MARGIN)
            outcomes.append({stats.NON_INFERIOR: 1, stats.INFERIOR: -1}.get(v, 0))
        parts.append(f"{t.a_name} {_acc(t.a)} vs {t.b_name} {_acc(t.b)}: {_ci(t.diff)}, p = {t.diff.p_value:.3g} "
                     f"(Holm {p:.3g}; {t.diff.test}) → **{v}**")
    verdict = NOT_SUPPORTED if any(o < 0 for o in outcomes) else SUPPORTED if all(o > 0 for o in outcomes) else INCONCLUSIVE
    return verdict, "; ".join(parts)


def _axis_rows(pt: pd.DataFrame, axis: str, values: tuple, prefer: dict) -> list[pd.Series] | None:
    """Prompt-tuning variants that differ only in ``axis`` and cover ``values``; among several such
    sets, the one matching ``prefer`` (the paper's setting for the other fields), else the first."""
    sets: dict[str, dict] = {}
    for _, r in pt.iterrows():
        cfg = r["config"]
        if cfg.get(axis) in values:
            rest = repr(sorted((k, v) for k, v in cfg.items() if k not in (axis, "lr")))
            sets.setdefault(rest, {})[cfg.get(axis)] = r
    full = [s for s in sets.values() if all(v in s for v in values)]
    if not full:
        return None
    pick = next((s for s in full if all(s[values[0]]["config"].get(k) == v for k, v in prefer.items())), full[0])
    return [pick[v] for v in values]


def _init_order(sampled: str):
    def check(rows: pd.DataFrame) -> tuple[str, str] | None:
        got = _axis_rows(rows[rows["method"] == METHOD], "init", ("class_label", sampled, "random"),
                         {"num_virtual_tokens": 20})
        if not got:
            return None
        cl, sv, rnd = got
        verdict, text = _decide([Test("class_label", cl, sampled, sv, "noninferior"),
                                 Test(sampled, sv, "random", rnd, "noninferior")])
        return verdict, f"at {cl['config'].get('num_virtual_tokens')} tokens: {text}"
    return check


def prompt_length(rows: pd.DataFrame) -> tuple[str, str] | None:
    got = _axis_rows(rows[rows["method"] == METHOD], "num_virtual_tokens", (1, 20, 100), {"init": "class_label"})
    if not got:
        return None
    one, twenty, hundred = got
    # "little gain 20 -> 100": 100 - 20 <= MARGIN, i.e. 20 is non-inferior to 100
    verdict, text = _decide([Test("20 tokens", twenty, "1 token", one, "better"),
                             Test("20 tokens", twenty, "100 tokens", hundred, "noninferior")])
    return verdict, f"init={twenty['config'].get('init')}: {text}"


def _best_on_validation(rows: pd.DataFrame) -> pd.Series | None:
    """The variant with the best validation accuracy (None when no variant has one: never test)."""
    scored = rows[rows["val_accuracy"].notna()] if "val_accuracy" in rows else rows.iloc[0:0]
    return None if scored.empty else scored.loc[scored["val_accuracy"].idxmax()]


def trails_full_finetuning(rows: pd.DataFrame) -> tuple[str, str] | None:
    pt, ft = rows[rows["method"] == METHOD], rows[rows["method"] == "full_finetune"]
    if pt.empty or ft.empty:
        return None
    best_pt, best_ft = _best_on_validation(pt), _best_on_validation(ft)
    if best_pt is None or best_ft is None:
        return INCONCLUSIVE, "no validation scores to choose the variants on (test is never used to choose)"
    verdict, text = _decide([Test("full fine-tuning", best_ft, f"{best_pt['label']} (best on validation)",
                                  best_pt, "better")])
    return verdict, text


def _head(r: pd.Series) -> int:
    h = r.get("trainable_head_params", math.nan)
    return 0 if h is None or math.isnan(h) else int(h)


def _fewer_than(other: str):
    def check(rows: pd.DataFrame) -> tuple[str, str] | None:
        pt, ref = rows[rows["method"] == METHOD], rows[rows["method"] == other]
        if pt.empty or ref.empty:
            return None
        o = ref.iloc[0]
        ratios = []
        head = _head(pt.iloc[0])  # the same head for every method of a model and task
        for _, p in pt.iterrows():
            own = lambda r, col: r[col] - head  # noqa: E731
            with_head = min(o["trainable_params"] / p["trainable_params"], o["stored_params"] / p["stored_params"])
            without = min(own(o, "trainable_params") / own(p, "trainable_params"),
                          own(o, "stored_params") / own(p, "stored_params"))
            ratios.append((without, with_head, p))
        worst = min(ratios, key=lambda x: x[0])
        verdict = SUPPORTED if worst[0] >= ORDER else NOT_SUPPORTED
        text = (f"{o['label']}: {o['trainable_params']:,.0f} trainable / {o['stored_params']:,.0f} stored; fewest ratio "
                f"(of trainable and stored) {_ratio(worst[0])} for {worst[2]['label']} "
                f"({worst[2]['trainable_params'] - head:,.0f} own parameters)"
                + (f"; counting the {head:,} head parameters every method trains on both sides: {_ratio(worst[1])}"
                   if head else "; no task head (nothing shared)")
                + "; per variant (without / with head): "
                + ", ".join(f"{p['label']} {_ratio(a)} / {_ratio(b)}" for a, b, p in ratios))
        return verdict, text
    return check


CHECKS = [
    ("a", "Prompt initialisation: class-label init ≥ sampled-vocabulary init (the paper's: uniform over the 5,000 "
          "most frequent tokens) ≥ random init.", _init_order("sample_frequent")),
    ("a′", "The same with peft's sampled-vocabulary init (uniform over the whole vocabulary).",
     _init_order("sample_vocab")),
    ("b", "Prompt length: 20 tokens > 1 token; going from 20 to 100 tokens gains little.", prompt_length),
    ("c", "At this model size, prompt tuning trails full fine-tuning.", trails_full_finetuning),
    ("d", "Prompt tuning trains and stores orders of magnitude fewer parameters than full fine-tuning.",
     _fewer_than("full_finetune")),
    ("d′", "(Not a claim of the paper) ... and than LoRA.", _fewer_than("lora")),
]


def family(model: str) -> str:
    """A model's family: its name without the size (``SmolLM2-360M-Instruct`` -> ``smollm2--instruct``)."""
    return re.sub(r"\d+(\.\d+)?[mb](?![a-z])", "", str(model).lower())


def gap_shrinks(rows: pd.DataFrame) -> tuple[str, str] | None:
    """Claim (e): the gap full fine-tuning - best prompt tuning (each chosen on validation) is
    smaller at the largest model of a family than at the smallest (a paired contrast on the
    task's test examples)."""
    gaps = []
    for model, part in rows.groupby("model"):
        pt = _best_on_validation(part[part["method"] == METHOD])
        ft = _best_on_validation(part[part["method"] == "full_finetune"])
        if pt is not None and ft is not None:
            gaps.append((ft["total_params"], model, ft, pt))
    if len(gaps) < 2:
        return None
    gaps.sort(key=lambda g: g[0])
    (s_n, s_m, s_ft, s_pt), (l_n, l_m, l_ft, l_pt) = gaps[0], gaps[-1]
    mats = [r.get("correct") for r in (s_ft, s_pt, l_ft, l_pt)]
    desc = (f"gap at {s_m} ({s_n / 1e6:,.0f}M): {s_ft['accuracy'] - s_pt['accuracy']:+.3f}; at {l_m} "
            f"({l_n / 1e6:,.0f}M): {l_ft['accuracy'] - l_pt['accuracy']:+.3f}")
    if any(m is None for m in mats) or len({tuple(m[1]) for m in mats}) != 1:
        return INCONCLUSIVE, desc + "; no shared per-example predictions: no paired test"
    d = stats.contrast([m[0] for m in mats], [1, -1, -1, 1])
    v = stats.verdict(d)
    verdict = {stats.BETTER: SUPPORTED, stats.WORSE: NOT_SUPPORTED}.get(v, INCONCLUSIVE)
    return verdict, f"{desc}; shrinkage {_ci(d)}, p = {d.p_value:.3g} ({d.test})"


def check_claims(summary: pd.DataFrame, metric: str = "accuracy") -> list[Claim]:
    """Every claim the summary (``results.aggregate.summarize``) holds the runs for."""
    out = []
    if summary.empty or metric != "accuracy" or metric not in summary:
        return out
    for (model, task), rows in summary.groupby(["model", "task"], sort=True):
        for cid, statement, fn in CHECKS:
            got = fn(rows)
            if got is not None:
                out.append(Claim(cid, statement, model, task, got[0], got[1]))
    fams = summary.assign(family=summary["model"].map(family))
    for (fam, task), rows in fams.groupby(["family", "task"], sort=True):
        got = gap_shrinks(rows)
        if got is not None:
            out.append(Claim("e", "The gap between prompt tuning and full fine-tuning shrinks with model size.",
                             ", ".join(sorted(rows["model"].unique())), task, got[0], got[1]))
    return out


def report_section(summary: pd.DataFrame, metric: str = "accuracy") -> str:
    """The report section of this study: every claim's verdict on the runs of ``summary``."""
    claims = check_claims(summary, metric)
    if not claims:
        return ""
    rows = [{"claim": f"({c.id}) {c.statement}", "model / task": f"{c.model} / {c.task}", "verdict": f"**{c.verdict}**",
             "numbers": c.evidence} for c in claims]
    steps = sorted({int(x) for x in summary.get("steps", pd.Series(dtype=float)).dropna()})
    scope = ("Scope: these verdicts are about this setting only — "
             + (f"{', '.join(map(str, steps))} training steps, " if steps else "")
             + (f"{int(summary['n'].min())}–{int(summary['n'].max())}" if summary["n"].min() != summary["n"].max()
                else f"{int(summary['n'].max())}") + " seed(s) per variant, the models and tasks named "
             "in each row. The paper trained T5 models of up to 11B parameters for 30,000 steps; a claim that does not "
             "hold here may hold there.")
    return ("## Claims of Lester et al. (2021), checked on these runs\n\n" + RULE + "\n\n" + scope + "\n\n"
            + md_table(rows, keep=("claim", "verdict", "numbers")) + "\n")
