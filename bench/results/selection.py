"""Hyperparameters chosen on validation: the one place a search's trials become one variant.

A suite's ``[search.<method>]`` table (``core.suite``) runs every variant of the method once per
point of its search space (a trial), with ``run.search`` naming the space and the trial. Here the
trials of one variant (same model, task, method and config apart from the searched fields, same
training settings) are reduced to the trial with the best mean validation score over its seeds
(the task's main metric, higher is better; ties: the first in the space's order). The test split
is never read to choose: a trial without a validation score cannot be chosen, and a variant none
of whose trials has one keeps all its trials (labelled as such by their values).
"""

from __future__ import annotations

import math
import statistics

from peft_bench.results.schema import ResultRecord


def _search_key(key: tuple, recs: list[ResultRecord]) -> tuple | None:
    """The variant key without the searched fields (None: not a trial of a search)."""
    search = recs[0].run.search
    if not search:
        return None
    searched = set(search.get("space", {}))
    cfg = {k: v for k, v in recs[0].run.method_config.items() if k not in searched}
    return (key[0], key[1], key[2], repr(sorted(cfg.items())), key[4], repr(sorted(search["space"].items())))


def objective_metric(search: dict) -> str:
    """The validation metric a search maximises ("validation accuracy" -> "accuracy")."""
    return str(search.get("objective", "validation accuracy")).split()[-1]


def val_score(recs: list[ResultRecord], metric: str) -> float:
    """Mean over the search's seeds (``search["seeds"]``; all when it names none) of the validation
    score (NaN when one of them has none: not comparable)."""
    seeds = (recs[0].run.search or {}).get("seeds")
    vals = [r.validation[metric].value if metric in r.validation else math.nan for r in recs
            if seeds is None or (r.run.train or {}).get("seed") in seeds]
    return statistics.fmean(vals) if vals and not any(math.isnan(v) for v in vals) else math.nan


def select(groups: dict[tuple, list[ResultRecord]]) -> tuple[dict[tuple, list[ResultRecord]], dict[tuple, tuple]]:
    """(the groups with each search's trials reduced to the chosen one, and for each chosen group
    (the values chosen, every trial as {values, validation score, seeds, chosen}))."""
    searches: dict[tuple, list[tuple]] = {}
    kept: dict[tuple, list[ResultRecord]] = {}
    for key, recs in groups.items():
        skey = _search_key(key, recs)
        if skey is None:
            kept[key] = recs
        else:
            searches.setdefault(skey, []).append(key)
    chosen: dict[tuple, tuple] = {}
    for keys in searches.values():
        search = groups[keys[0]][0].run.search
        metric = objective_metric(search)
        space = search["space"]
        order = lambda k: [space[f].index(groups[k][0].run.method_config.get(f))  # noqa: E731
                           if groups[k][0].run.method_config.get(f) in space[f] else 0 for f in space]
        keys = sorted(keys, key=order)
        scores = {k: val_score(groups[k], metric) for k in keys}
        valid = [k for k in keys if not math.isnan(scores[k])]
        if not valid:  # nothing to choose on: every trial stays, none is called chosen
            kept.update({k: groups[k] for k in keys})
            continue
        best = max(valid, key=lambda k: scores[k])  # max keeps the first of equal scores
        values = {f: groups[best][0].run.method_config.get(f) for f in space}
        trials = [{"values": {f: groups[k][0].run.method_config.get(f) for f in space},
                   f"validation {metric}": scores[k], "seeds": len(groups[k]), "chosen": k == best} for k in keys]
        if search.get("seeds") is not None:  # chosen on the search seeds: count those
            for t, k in zip(trials, keys):
                t["seeds"] = sum((r.run.train or {}).get("seed") in search["seeds"] for r in groups[k])
        kept[best] = groups[best]
        chosen[best] = (values, trials)
    return kept, chosen


def eligible(specs: list, records: list[ResultRecord]) -> list:
    """The deferred trial specs (``core.suite.Suite.deferred``) whose trial is the one chosen on
    validation from ``records`` (the trials on the search seeds): the runs left to do."""
    from peft_bench.results.schema import RunInfo
    from peft_bench.results.variants import group, variant_key

    _, chosen = select(group([r for r in records if r.status == "ok"]))
    return [s for s in specs if variant_key(RunInfo(run_id=s.run_id, **s.as_dict())) in chosen]
