"""Paired statistics over per-example correctness: the one place confidence intervals, tests and
verdicts are computed.

Every variant is scored on the same test examples, so two variants are compared *paired*: the
examples are resampled jointly, and each variant's seeds with them (paired seed by seed when both
have the same seeds). Inputs are 0/1 correctness arrays of shape (seeds, examples), rows in seed
order, columns in one example order shared by both variants.

- ``accuracy_ci``: a variant's accuracy with a percentile-bootstrap interval over examples and
  seeds, so it holds both test-set sampling and seed variance;
- ``paired_difference``: mean(a) - mean(b) with its interval and a two-sided p-value: the exact
  McNemar test (``scipy.stats.binomtest`` on the discordant pairs) for one seed each, the
  bootstrap's for several;
- ``holm``: Holm's step-down correction of the p-values of one claim;
- ``verdict`` / ``non_inferiority``: "better" / "worse" / "inconclusive", and "non-inferior" /
  "inferior" / "inconclusive" against a stated margin, so that an underpowered comparison says
  "inconclusive" and never supports a claim.

The two-level bootstrap (seeds, then examples) is written here: ``scipy.stats.bootstrap``
resamples along one axis only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Estimate:
    value: float  # the point estimate (mean over seeds and examples; or the difference of two)
    low: float  # the confidence interval at ``level``
    high: float
    level: float = LEVEL
    p_value: float | None = None  # differences only: two-sided, H0 = no difference
    test: str = ""  # how the p-value was computed

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def _as_matrix(correct) -> np.ndarray:
    m = np.asarray(correct, dtype=float)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[1] == 0 or m.shape[0] == 0:
        raise ValueError(f"correctness must be (seeds, examples) with at least one of each, got shape {m.shape}.")
    if not np.isin(m, (0.0, 1.0)).all():
        raise ValueError("correctness must hold only 0 and 1.")
    return m


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    return float(np.quantile(samples, alpha)), float(np.quantile(samples, 1 - alpha))


def _resample_means(m: np.ndarray, example_idx: np.ndarray, seed_idx: np.ndarray) -> np.ndarray:
    """Mean correctness of every resample: ``seed_idx`` (R, S) rows, ``example_idx`` (R, N) columns."""
    # per resample: mean over its drawn seeds of the mean over its drawn examples; done per seed row
    # (an (S, R) table) so memory stays O(S x R) whatever N is
    per_seed = np.stack([row[example_idx].mean(axis=1) for row in m])  # (S, R)
    return np.take_along_axis(per_seed.T, seed_idx, axis=1).mean(axis=1)


def accuracy_ci(correct, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """Accuracy of one variant with a bootstrap interval over examples and seeds."""
    m = _as_matrix(correct)
    rng = np.random.default_rng(seed)
    s, n = m.shape
    ex = rng.integers(0, n, size=(resamples, n))
    sd = rng.integers(0, s, size=(resamples, s))
    low, high = _interval(_resample_means(m, ex, sd), level)
    return Estimate(float(m.mean()), low, high, level)


def paired_difference(a, b, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """accuracy(a) - accuracy(b) on the same examples, with its interval and p-value (see module)."""
    ma, mb = _as_matrix(a), _as_matrix(b)
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(f"a paired comparison needs the same examples: {ma.shape[1]} against {mb.shape[1]}.")
    rng = np.random.default_rng(seed)
    n = ma.shape[1]
    ex = rng.integers(0, n, size=(resamples, n))  # the same examples for both
    sa = rng.integers(0, ma.shape[0], size=(resamples, ma.shape[0]))
    # the same seeds for both when both ran the same seeds (a seed shares its data order)
    sb = sa if mb.shape[0] == ma.shape[0] else rng.integers(0, mb.shape[0], size=(resamples, mb.shape[0]))
    diffs = _resample_means(ma, ex, sa) - _resample_means(mb, ex, sb)
    low, high = _interval(diffs, level)
    value = float(ma.mean() - mb.mean())
    if ma.shape[0] == mb.shape[0] == 1:
        n01 = int(((ma[0] == 1) & (mb[0] == 0)).sum())
        n10 = int(((ma[0] == 0) & (mb[0] == 1)).sum())
        p = stats.binomtest(n01, n01 + n10, 0.5).pvalue if n01 + n10 else 1.0
        test = f"exact McNemar ({n01} vs {n10} discordant)"
    else:  # the bootstrap's: twice the smaller tail of the resampled differences around 0
        p = min(1.0, 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean())))
        p = max(p, 1 / resamples) if p == 0 else p
        test = f"paired bootstrap ({resamples} resamples)"
    return Estimate(value, low, high, level, float(p), test)


def contrast(mats: list, weights: list[float], level: float = LEVEL, resamples: int = RESAMPLES,
             seed: int = 0) -> Estimate:
    """sum_i weights[i] * accuracy(mats[i]) over variants scored on the same examples (e.g. the
    change of a gap between two model sizes: (ft_small - pt_small) - (ft_large - pt_large)), with a
    bootstrap interval (examples resampled jointly for all, each variant's seeds with its own draw)
    and the bootstrap's two-sided p-value against 0."""
    ms = [_as_matrix(m) for m in mats]
    if len({m.shape[1] for m in ms}) != 1:
        raise ValueError(f"a contrast needs the same examples for every variant, got {[m.shape[1] for m in ms]}.")
    rng = np.random.default_rng(seed)
    n = ms[0].shape[1]
    ex = rng.integers(0, n, size=(resamples, n))
    total = np.zeros(resamples)
    for m, w in zip(ms, weights):
        total += w * _resample_means(m, ex, rng.integers(0, m.shape[0], size=(resamples, m.shape[0])))
    low, high = _interval(total, level)
    value = float(sum(w * m.mean() for m, w in zip(ms, weights)))
    p = min(1.0, 2 * min(float((total <= 0).mean()), float((total >= 0).mean())))
    return Estimate(value, low, high, level, max(p, 1 / resamples), f"bootstrap contrast ({resamples} resamples)")


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


BETTER, WORSE, INCONCLUSIVE = "better", "worse", "inconclusive"
NON_INFERIOR, INFERIOR = "non-inferior", "inferior"


def verdict(diff: Estimate, alpha: float = 1 - LEVEL, p_adjusted: float | None = None) -> str:
    """"better" / "worse" when the difference is significant (its interval excludes 0 and its
    p-value, Holm-adjusted when given, is below ``alpha``), else "inconclusive"."""
    p = diff.p_value if p_adjusted is None else p_adjusted
    if p is not None and p >= alpha:
        return INCONCLUSIVE
    if diff.low > 0:
        return BETTER
    if diff.high < 0:
        return WORSE
    return INCONCLUSIVE


def non_inferiority(diff: Estimate, margin: float) -> str:
    """Is a at least as good as b up to ``margin`` (a - b >= -margin)? "non-inferior" when the whole
    interval lies above -margin, "inferior" when it lies below, else "inconclusive" (an interval
    wider than the margin can never support the claim)."""
    if not (margin > 0 and math.isfinite(margin)):
        raise ValueError(f"`margin` must be a positive number, got {margin!r}.")
    if diff.low > -margin:
        return NON_INFERIOR
    if diff.high < -margin:
        return INFERIOR
    return INCONCLUSIVE
