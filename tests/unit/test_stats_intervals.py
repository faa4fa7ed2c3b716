"""Intervals against statsmodels / scipy, and the delta-method uplift interval against
simulated coverage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from sluice.core.stats.checks import StatsInputError
from sluice.core.stats.intervals import (
    mean_interval,
    newcombe_interval,
    relative_uplift_interval,
    welch_interval,
    wilson_interval,
)

RUNS = 2000


@pytest.mark.parametrize(("s", "n"), [(7, 50), (0, 20), (20, 20), (123, 4567), (1, 3)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_statsmodels(s: int, n: int, confidence: float) -> None:
    ours = wilson_interval(s, n, confidence)
    lo, hi = proportion_confint(s, n, alpha=1 - confidence, method="wilson")
    assert (ours.lower, ours.upper) == pytest.approx((lo, hi), abs=1e-12)
    assert ours.lower <= ours.estimate <= ours.upper


@pytest.mark.parametrize(("sc", "nc", "st", "nt"), [(10, 100, 20, 100), (0, 30, 5, 40), (450, 5000, 520, 5100)])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_newcombe_matches_statsmodels(sc: int, nc: int, st: int, nt: int, confidence: float) -> None:
    ours = newcombe_interval(sc, nc, st, nt, confidence)
    lo, hi = confint_proportions_2indep(st, nt, sc, nc, method="newcomb", compare="diff", alpha=1 - confidence)
    assert (ours.lower, ours.upper) == pytest.approx((lo, hi), abs=1e-12)


def test_mean_and_welch_intervals_match_scipy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(10, 2, 60), rng.exponential(11, 90)
    m = mean_interval(a.size, a.sum(), (a**2).sum(), 0.9)
    ref = sps.t.interval(0.9, a.size - 1, loc=a.mean(), scale=sps.sem(a))
    assert (m.lower, m.upper) == pytest.approx(ref, rel=1e-9)
    w = welch_interval(a.size, a.sum(), (a**2).sum(), b.size, b.sum(), (b**2).sum(), 0.95)
    ci = sps.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert (w.lower, w.upper) == pytest.approx((ci.low, ci.high), rel=1e-9)


def coverage(hits: np.ndarray) -> tuple[float, float]:
    rate = float(np.mean(hits))
    return rate, 3.0 * np.sqrt(0.95 * 0.05 / hits.size)


def test_delta_method_uplift_interval_covers_the_true_uplift_for_rates() -> None:
    rng = np.random.default_rng(42)
    pc, pt, n = 0.10, 0.11, 6000
    sc, st = rng.binomial(n, pc, RUNS), rng.binomial(n, pt, RUNS)
    mc, mt = sc / n, st / n
    iv = relative_uplift_interval(n, mc, mc * (1 - mc), n, mt, mt * (1 - mt))
    rate, tol = coverage((iv.lower <= pt / pc - 1) & (pt / pc - 1 <= iv.upper))
    assert abs(rate - 0.95) <= tol, rate


def test_delta_method_uplift_interval_covers_the_true_uplift_for_skewed_means() -> None:
    rng = np.random.default_rng(8)
    n = 3000
    # Exponential rewards: control mean 5, treatment mean 5.4 (true uplift +8 %).
    c, t = rng.exponential(5.0, (RUNS, n)), rng.exponential(5.4, (RUNS, n))
    iv = relative_uplift_interval(n, c.mean(1), c.var(1, ddof=1), n, t.mean(1), t.var(1, ddof=1))
    rate, tol = coverage((iv.lower <= 0.08) & (0.08 <= iv.upper))
    assert abs(rate - 0.95) <= tol, rate


def test_interval_inputs_are_checked() -> None:
    with pytest.raises(StatsInputError, match=r"confidence must be in \(0, 1\), but 95"):
        wilson_interval(1, 10, 95)
    with pytest.raises(StatsInputError, match=r"successes must be <= n"):
        wilson_interval(11, 10)
    with pytest.raises(StatsInputError, match=r"mean_control must be non-zero"):
        relative_uplift_interval(10, 0.0, 0.0, 10, 0.1, 0.09)
