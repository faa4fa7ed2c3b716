"""The power calculator against statsmodels, and against a simulated A/B test: the
experiment it sizes detects the effect about as often as it promised."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import samplesize_proportions_2indep_onetail

from sluice.core.power import exact_sample_size, power_at, sample_size
from sluice.core.stats.checks import StatsInputError
from sluice.core.stats.multiple import holm_adjust
from sluice.core.stats.significance import two_proportion_ztest, welch_ttest

RUNS = 2000


@pytest.mark.parametrize(("baseline", "mde"), [(0.10, 0.10), (0.02, 0.2), (0.5, -0.05), (0.3, 0.03)])
@pytest.mark.parametrize("power", [0.8, 0.9])
def test_binary_sample_size_matches_statsmodels(baseline: float, mde: float, power: float) -> None:
    ref = samplesize_proportions_2indep_onetail(baseline * mde, baseline, power, alpha=0.05)
    # statsmodels ignores the far tail of the two-sided test; it is below 1e-4 relative here.
    assert exact_sample_size(baseline, mde, power=power) == pytest.approx(ref, rel=1e-4)


@pytest.mark.parametrize(("effect", "alpha", "power"), [(0.1, 0.05, 0.8), (0.02, 0.01, 0.9), (0.5, 0.1, 0.8)])
def test_continuous_sample_size_matches_normal_ind_power(effect: float, alpha: float, power: float) -> None:
    ref = NormalIndPower().solve_power(effect_size=effect, alpha=alpha, power=power, ratio=1.0)
    ours = exact_sample_size(20.0, effect * 4.0, alpha=alpha, power=power, kind="continuous", sd=4.0, relative=False)
    assert ours == pytest.approx(ref, rel=1e-6)


def test_more_arms_share_alpha_and_need_more_events() -> None:
    two, four = sample_size(0.1, 0.1), sample_size(0.1, 0.1, n_arms=4)
    assert four.alpha_per_comparison == pytest.approx(0.05 / 3)
    assert four.per_arm > two.per_arm
    assert four.total == 4 * four.per_arm
    assert four.achieved_power >= 0.8
    assert power_at(four.per_arm, 0.1, 0.1, n_arms=4) == pytest.approx(four.achieved_power)


def test_simulated_ab_test_has_the_promised_power_for_rates() -> None:
    size = sample_size(0.10, 0.10, power=0.8)
    n = size.per_arm
    rng = np.random.default_rng(123)
    sc, st = rng.binomial(n, 0.10, RUNS), rng.binomial(n, 0.11, RUNS)
    observed = np.mean(two_proportion_ztest(sc, n, st, n).p_value < 0.05)
    assert abs(observed - size.achieved_power) <= 3 * np.sqrt(0.8 * 0.2 / RUNS), observed


def test_simulated_three_arm_test_with_holm_has_at_least_the_promised_power() -> None:
    size = sample_size(0.05, 0.15, power=0.8, n_arms=3)
    n = size.per_arm
    rng = np.random.default_rng(321)
    sc = rng.binomial(n, 0.05, RUNS)
    st = rng.binomial(n, 0.0575, (RUNS, 2))  # both treatments carry the effect
    p = two_proportion_ztest(sc[:, None], n, st, n).p_value
    detected = np.array([holm_adjust(row)[0] < 0.05 for row in p])
    # Holm's later steps are laxer than Bonferroni, so power is at least the promise.
    assert np.mean(detected) >= size.achieved_power - 3 * np.sqrt(0.8 * 0.2 / RUNS)


def test_simulated_ab_test_has_the_promised_power_for_means() -> None:
    size = sample_size(10.0, 0.05, power=0.9, kind="continuous", sd=6.0)
    n = size.per_arm
    rng = np.random.default_rng(9)
    c = rng.normal(10.0, 6.0, (RUNS, n))
    t = rng.normal(10.5, 6.0, (RUNS, n))
    p = welch_ttest(n, c.sum(1), (c**2).sum(1), n, t.sum(1), (t**2).sum(1)).p_value
    assert abs(np.mean(p < 0.05) - size.achieved_power) <= 3 * np.sqrt(0.9 * 0.1 / RUNS)


def test_bad_designs_are_refused_with_the_field_named() -> None:
    with pytest.raises(StatsInputError, match=r"mde must move the baseline rate 0.9 to a rate inside \(0, 1\)"):
        sample_size(0.9, 0.2)
    with pytest.raises(StatsInputError, match=r"sd must be a positive number"):
        sample_size(10.0, 0.1, kind="continuous")
    with pytest.raises(StatsInputError, match=r"n_arms must be an integer >= 2, but 1"):
        sample_size(0.1, 0.1, n_arms=1)
    with pytest.raises(StatsInputError, match=r"mde must be a non-zero number"):
        sample_size(0.1, 0.0)
    with pytest.raises(StatsInputError, match=r"power must be in \(0, 1\), but 80"):
        sample_size(0.1, 0.1, power=80)
