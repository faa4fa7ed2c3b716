"""IPW vs naive arm means on simulated bandit-collected data: rates rise over time while
the bandit moves traffic to the arm that looks better, so the naive means are biased; the
inverse-propensity-weighted ones are not, and their intervals cover."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.core.ipw import ipw_means
from sluice.core.stats.checks import StatsInputError

RUNS = 1000
PERIODS = 48
SERVES = 400  # per period, all arms together
# Base conversion rate climbs through the window (a weekday ramp); arm 1 adds +1 point.
BASE = np.linspace(0.04, 0.12, PERIODS)
RATES = np.stack([BASE, BASE + 0.01], axis=1)  # (P, 2)
TRUE_MEANS = RATES.mean(axis=0)  # every period has the same number of serves


def simulate(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Per-run (RUNS, P, 2) weights, serves and successes from an adaptive 2-arm bandit."""
    weights = np.empty((RUNS, PERIODS, 2))
    serves = np.empty((RUNS, PERIODS, 2))
    successes = np.empty((RUNS, PERIODS, 2))
    seen_n = np.ones((RUNS, 2))
    seen_s = np.zeros((RUNS, 2))
    for p in range(PERIODS):
        # The bandit's weight for arm 1 follows the observed difference so far (clipped so
        # both arms keep some traffic): chosen from past data only, as a real policy is.
        gap = seen_s[:, 1] / seen_n[:, 1] - seen_s[:, 0] / seen_n[:, 0]
        w1 = np.clip(0.5 + 25.0 * gap, 0.1, 0.9)
        weights[:, p] = np.stack([1 - w1, w1], axis=1)
        n1 = rng.binomial(SERVES, w1)
        serves[:, p] = np.stack([SERVES - n1, n1], axis=1)
        successes[:, p] = rng.binomial(serves[:, p].astype(int), RATES[p])
        seen_n += serves[:, p]
        seen_s += successes[:, p]
    return weights, serves, successes


@pytest.fixture(scope="module")
def estimates() -> list:
    w, n, s = simulate(np.random.default_rng(31337))
    # 0/1 rewards: the sum of squares equals the sum.
    return [ipw_means(w[r], n[r], s[r], s[r]) for r in range(RUNS)]


def test_naive_means_are_biased_on_bandit_data(estimates: list) -> None:
    naive = np.array([e.naive_mean for e in estimates])
    bias = naive.mean(axis=0) - TRUE_MEANS
    mc_se = naive.std(axis=0, ddof=1) / np.sqrt(RUNS)
    # Arm 0 lost its traffic early, before the rates climbed: it looks worse than it is,
    # and the naive gap between the arms is inflated.
    assert bias[0] < -10 * mc_se[0], (bias, mc_se)
    assert np.mean(naive[:, 1] - naive[:, 0]) > 0.01 + 0.004
    covered = np.mean([(e.naive_lower[0] <= TRUE_MEANS[0] <= e.naive_upper[0]) for e in estimates])
    assert covered < 0.8


def test_ipw_means_are_unbiased_and_their_intervals_cover(estimates: list) -> None:
    ipw = np.array([e.ipw_mean for e in estimates])
    mc_se = ipw.std(axis=0, ddof=1) / np.sqrt(RUNS)
    assert np.all(np.abs(ipw.mean(axis=0) - TRUE_MEANS) < 3 * mc_se), (ipw.mean(axis=0), TRUE_MEANS)
    for k in range(2):
        covered = np.mean([e.ipw_lower[k] <= TRUE_MEANS[k] <= e.ipw_upper[k] for e in estimates])
        assert covered >= 0.95 - 3 * np.sqrt(0.95 * 0.05 / RUNS), (k, covered)


def test_with_fixed_equal_weights_ipw_and_naive_agree_closely() -> None:
    w = np.full((3, 2), 0.5)
    n = np.array([[50, 50], [48, 52], [51, 49]], dtype=float)
    s = np.array([[5, 7], [6, 6], [4, 9]], dtype=float)
    e = ipw_means(w, n, s, s)
    np.testing.assert_allclose(e.naive_mean, s.sum(0) / n.sum(0))
    np.testing.assert_allclose(e.ipw_mean, e.naive_mean, rtol=0.05)
    assert e.total == 300


def test_a_serve_with_zero_propensity_is_refused_with_its_cell_named() -> None:
    w = np.array([[0.5, 0.5], [1.0, 0.0]])
    n = np.array([[10, 10], [15, 2]])
    with pytest.raises(StatsInputError, match=r"period_weights\[1, 1\] is 0, but arm 1 was served 2 times"):
        ipw_means(w, n, n * 0.1, n * 0.1)
