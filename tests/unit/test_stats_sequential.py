"""The mSPRT stays valid under continuous peeking (simulation), while a fixed-horizon test
looked at as often does not; its intervals keep covering; it still finds real effects."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.core.sequential import (
    default_mixture_sd,
    msprt,
    msprt_means,
    msprt_proportions,
    running_intervals,
    running_p_values,
)
from sluice.core.stats.checks import StatsInputError
from sluice.core.stats.significance import two_proportion_ztest

RUNS = 2000
ALPHA = 0.05
BATCH = 80  # events per arm between looks
LOOKS = 250  # up to 20,000 events per arm
FIRST_LOOK = 3  # monitoring starts once each arm has 320 events
# Tuned to a +10 % uplift on a 10 % rate: the size of effect these simulations look for.
TAU = default_mixture_sd(0.10, 0.3, relative_effect=0.10)


def cumulative_counts(rng: np.random.Generator, rate_c: float, rate_t: float) -> tuple[np.ndarray, ...]:
    """Successes and events per arm at every look, shape (RUNS, LOOKS)."""
    sc = np.cumsum(rng.binomial(BATCH, rate_c, (RUNS, LOOKS)), axis=1)
    st = np.cumsum(rng.binomial(BATCH, rate_t, (RUNS, LOOKS)), axis=1)
    n = np.broadcast_to(BATCH * np.arange(1, LOOKS + 1), (RUNS, LOOKS))
    return sc[:, FIRST_LOOK:], st[:, FIRST_LOOK:], n[:, FIRST_LOOK:]


def test_msprt_false_positive_rate_stays_below_alpha_under_continuous_peeking() -> None:
    sc, st, n = cumulative_counts(np.random.default_rng(2024), 0.10, 0.10)
    p = msprt_proportions(sc, n, st, n, TAU).p_value
    rejected_ever = np.any(p <= ALPHA, axis=1)
    assert np.mean(rejected_ever) <= ALPHA, np.mean(rejected_ever)

    # The same peeking with a fixed-horizon z-test: the reason the mSPRT exists.
    z_p = two_proportion_ztest(sc, n, st, n).p_value
    assert np.mean(np.any(z_p <= ALPHA, axis=1)) > 3 * ALPHA


def test_msprt_on_skewed_means_stays_below_alpha_under_peeking() -> None:
    rng = np.random.default_rng(77)
    runs, looks, batch = 1000, 100, 50
    def path() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = rng.exponential(4.0, (runs, looks, batch)) * (rng.random((runs, looks, batch)) < 0.4)
        return (
            np.broadcast_to(batch * np.arange(1, looks + 1), (runs, looks)).astype(float),
            np.cumsum(x.sum(axis=2), axis=1),
            np.cumsum((x**2).sum(axis=2), axis=1),
        )
    n, s_c, ss_c = path()
    _, s_t, ss_t = path()
    tau = default_mixture_sd(1.6, 3.0, 0.03)
    p = msprt_means(n, s_c, ss_c, n, s_t, ss_t, tau).p_value[:, 2:]
    assert np.mean(np.any(p <= ALPHA, axis=1)) <= ALPHA


def test_running_intervals_cover_the_true_difference_at_every_look() -> None:
    sc, st, n = cumulative_counts(np.random.default_rng(5), 0.10, 0.11)
    r = msprt_proportions(sc, n, st, n, TAU)
    lo, hi = running_intervals(r.lower, r.upper)
    covered_throughout = np.all((lo <= 0.01) & (0.01 <= hi), axis=1)
    assert np.mean(covered_throughout) >= 1 - ALPHA


def test_msprt_finds_a_real_effect_and_its_running_p_never_rises() -> None:
    sc, st, n = cumulative_counts(np.random.default_rng(6), 0.10, 0.11)
    p = running_p_values(msprt_proportions(sc, n, st, n, TAU).p_value)
    assert np.all(np.diff(p, axis=1) <= 0)
    # +10 % on a 10 % rate by 20,000 events per arm: about 0.70 (a fixed-horizon test
    # looked at once, at the end, would have 0.99; that is the price of peeking freely).
    assert np.mean(p[:, -1] <= ALPHA) > 0.6


@pytest.mark.parametrize("d", [0.0, 0.004, 0.0075, 0.02])
def test_p_value_and_interval_agree(d: float) -> None:
    r = msprt(4000, 0.10, 0.09, 4000, 0.10 + d, (0.1 + d) * (0.9 - d), mixture_sd=0.005)
    excludes_zero = r.lower > 0 or r.upper < 0
    assert (r.p_value <= ALPHA) == excludes_zero
    # Λ at the interval's end is exactly 1/α: the bound is where the test flips.
    edge = msprt(4000, 0.10, 0.09, 4000, 0.10 + d, (0.1 + d) * (0.9 - d), 0.005, null_difference=r.upper)
    assert edge.p_value == pytest.approx(ALPHA, rel=1e-9)


def test_data_without_spread_are_exact() -> None:
    assert msprt(100, 1.0, 0.0, 100, 1.0, 0.0, 0.1).p_value == 1.0
    assert msprt(100, 1.0, 0.0, 100, 2.0, 0.0, 0.1).p_value == 0.0


def test_default_mixture_sd_never_collapses_to_zero() -> None:
    assert default_mixture_sd(0.1, 0.3, 0.05) == pytest.approx(0.005)
    assert default_mixture_sd(0.1, 0.3, 0.0) == pytest.approx(0.001)  # floored at 1 % relative
    assert default_mixture_sd(0.0, 2.0, 0.03) == pytest.approx(0.02)
    assert default_mixture_sd(0.0, 0.0, 0.03) > 0


def test_bad_mixture_sd_is_refused() -> None:
    with pytest.raises(StatsInputError, match=r"mixture_sd must be a positive number, but 0"):
        msprt(10, 0.1, 0.09, 10, 0.1, 0.09, mixture_sd=0)
