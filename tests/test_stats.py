"""Paired statistics on hand-made predictions of known structure."""

from __future__ import annotations

import numpy as np
import pytest

from peft_bench.results.stats import (BETTER, INCONCLUSIVE, NON_INFERIOR, WORSE, accuracy_ci, holm,
                                      non_inferiority, paired_difference, verdict)


def test_identical_predictions_give_a_difference_around_zero_and_inconclusive():
    rng = np.random.default_rng(1)
    a = rng.random(500) < 0.7
    d = paired_difference(a, a.copy())
    assert d.value == 0 and d.low == d.high == 0 and d.p_value == 1.0  # paired: the same examples each time
    assert verdict(d) == INCONCLUSIVE


def test_a_planted_ten_point_gap_on_1000_examples_is_better():
    rng = np.random.default_rng(2)
    b = rng.random(1000) < 0.70
    a = b.copy()
    flip = rng.choice(np.flatnonzero(~b), size=100, replace=False)  # 100 more examples right: +10 points
    a[flip] = True
    d = paired_difference(a, b)
    assert d.value == pytest.approx(0.10) and d.p_value < 0.01 and "McNemar" in d.test
    assert d.low > 0.07 and verdict(d) == BETTER
    assert verdict(paired_difference(b, a)) == WORSE


def test_the_interval_covers_the_true_difference_in_at_least_90_percent_of_draws():
    """Simulated draws of two correlated variants on 400 examples: a is right where u < 0.75, b
    where u < 0.70 with 10% of its answers flipped, so E[a] - E[b] = 0.75 - (0.7 x 0.9 + 0.3 x 0.1)
    = 0.09. The 95% interval of the paired difference covers 0.09 in >= 90% of 100 draws."""
    rng = np.random.default_rng(3)
    covered, draws = 0, 100
    for i in range(draws):
        u = rng.random(400)
        a, b = u < 0.75, (u < 0.70) ^ (rng.random(400) < 0.1)
        covered += paired_difference(a, b, resamples=500, seed=i).contains(0.09)
    assert covered / draws >= 0.90, covered


def test_seeds_widen_the_interval_of_one_variant():
    """Two seeds that disagree by 10 points: the interval holds the seed variance, so it is wider
    than the interval of either seed alone over the same examples."""
    rng = np.random.default_rng(4)
    s0 = rng.random(600) < 0.65
    s1 = rng.random(600) < 0.75
    both = accuracy_ci(np.stack([s0, s1]))
    alone = accuracy_ci(s0)
    assert both.value == pytest.approx((s0.mean() + s1.mean()) / 2)
    assert both.high - both.low > alone.high - alone.low
    assert both.contains(s0.mean()) and both.contains(s1.mean())


def test_non_inferiority_is_inconclusive_when_the_interval_is_wider_than_the_margin():
    rng = np.random.default_rng(5)
    b = rng.random(60) < 0.7  # 60 examples: an interval of about +-0.15
    a = b.copy()
    d = paired_difference(a ^ (rng.random(60) < 0.2), b)
    assert d.high - d.low > 2 * 0.01
    assert non_inferiority(d, margin=0.01) == INCONCLUSIVE
    big = rng.random(5000) < 0.7
    assert non_inferiority(paired_difference(big, big.copy()), margin=0.01) == NON_INFERIOR
    with pytest.raises(ValueError, match="margin"):
        non_inferiority(d, margin=0)


def test_holm_adjusts_step_down():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([]) == []


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same examples"):
        paired_difference(np.ones(10), np.ones(11))
    with pytest.raises(ValueError, match="only 0 and 1"):
        accuracy_ci([0.5, 1.0])
