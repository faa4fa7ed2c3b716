"""Fixed-horizon tests against scipy / statsmodels, and their false-positive rate in A/A
simulations (2,000 seeded runs each, α = 0.05, rate must land in [4 %, 6 %])."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.proportion import proportions_ztest

from sluice.core.stats.checks import StatsInputError
from sluice.core.stats.significance import (
    chi_square_test,
    expected_serve_counts,
    sample_moments,
    srm_test,
    two_proportion_ztest,
    welch_ttest,
)

RUNS = 2000
ALPHA = 0.05


def sums(x: np.ndarray) -> tuple[float, float, float]:
    return float(x.size), float(x.sum()), float((x**2).sum())


@pytest.mark.parametrize(
    ("sc", "nc", "st", "nt"),
    [(100, 1000, 130, 1000), (5, 40, 1, 60), (480, 5000, 455, 4800), (0, 10, 3, 10)],
)
@pytest.mark.parametrize("alternative", ["two-sided", "larger", "smaller"])
def test_two_proportion_ztest_matches_statsmodels(sc: int, nc: int, st: int, nt: int, alternative: str) -> None:
    ours = two_proportion_ztest(sc, nc, st, nt, alternative=alternative)  # type: ignore[arg-type]
    z, p = proportions_ztest([st, sc], [nt, nc], alternative=alternative)
    assert ours.statistic == pytest.approx(z, rel=1e-12)
    assert ours.p_value == pytest.approx(p, rel=1e-10)
    assert ours.estimate == pytest.approx(st / nt - sc / nc)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("alternative", ["two-sided", "larger", "smaller"])
def test_welch_from_sums_matches_scipy_on_raw_samples(seed: int, alternative: str) -> None:
    rng = np.random.default_rng(seed)
    control = rng.gamma(2.0, 3.0, size=40 + 10 * seed)
    treatment = rng.normal(6.5, 5.0, size=75)
    ours = welch_ttest(*sums(control), *sums(treatment), alternative=alternative)  # type: ignore[arg-type]
    scipy_name = {"two-sided": "two-sided", "larger": "greater", "smaller": "less"}[alternative]
    ref = sps.ttest_ind(treatment, control, equal_var=False, alternative=scipy_name)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-8)
    assert ours.df == pytest.approx(ref.df, rel=1e-9)


def test_sample_moments_recover_mean_and_unbiased_variance() -> None:
    x = np.random.default_rng(3).normal(100.0, 7.0, size=500)
    mean, var = sample_moments(*sums(x))
    assert mean == pytest.approx(x.mean(), rel=1e-12)
    assert var == pytest.approx(x.var(ddof=1), rel=1e-8)


@pytest.mark.parametrize(
    ("successes", "n"),
    [([10, 20, 15], [100, 110, 90]), ([120, 135], [1000, 1000]), ([3, 9, 4, 30], [50, 60, 55, 200])],
)
def test_chi_square_matches_scipy_contingency(successes: list[int], n: list[int]) -> None:
    ours = chi_square_test(successes, n)
    table = np.array([successes, np.subtract(n, successes)])
    stat, p, df, expected = sps.chi2_contingency(table, correction=False)
    assert ours.statistic == pytest.approx(stat, rel=1e-12)
    assert ours.p_value == pytest.approx(p, rel=1e-10)
    assert ours.df == df
    np.testing.assert_allclose(ours.expected, expected)


def test_chi_square_with_no_successes_at_all_is_no_evidence() -> None:
    assert chi_square_test([0, 0, 0], [10, 20, 30]).p_value == pytest.approx(1.0)


def test_srm_matches_scipy_goodness_of_fit() -> None:
    observed = [5210, 4870, 9920]
    shares = [0.25, 0.25, 0.5]
    ours = srm_test(observed, shares)
    ref = sps.chisquare(observed, np.multiply(shares, sum(observed)))
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert ours.df == 2


def test_srm_flags_an_arm_served_while_its_weight_was_zero() -> None:
    assert srm_test([500, 480, 3], [0.5, 0.5, 0.0]).p_value == 0.0
    # A killed arm that got nothing is left out of the degrees of freedom.
    assert srm_test([500, 480, 0], [0.5, 0.5, 0.0]).df == 1


def test_expected_serves_follow_the_weights_in_force_in_each_period() -> None:
    weights = [[0.5, 0.5], [0.2, 0.8], [0.9, 0.1]]
    serves = [1000, 500, 100]
    np.testing.assert_allclose(expected_serve_counts(weights, serves), [500 + 100 + 90, 500 + 400 + 10])


def test_srm_on_bandit_data_passes_with_the_right_expectation_and_fails_with_the_wrong_one() -> None:
    rng = np.random.default_rng(11)
    weights = np.array([[0.5, 0.5], [0.3, 0.7], [0.1, 0.9]])
    serves = np.array([4000, 4000, 4000])
    observed = sum(rng.multinomial(m, w) for m, w in zip(serves, weights, strict=True))
    assert srm_test(observed, expected_serve_counts(weights, serves)).p_value > 0.01
    assert srm_test(observed, [0.5, 0.5]).p_value < 1e-6  # judging it against the final weights


# --- A/A: a true null must be rejected about α of the time --------------------------------


def in_band(rate: float) -> bool:
    return 0.04 <= rate <= 0.06


def test_aa_false_positive_rate_of_two_proportion_ztest() -> None:
    rng = np.random.default_rng(20240501)
    n = 3000
    s = rng.binomial(n, 0.08, size=(RUNS, 2))
    rate = np.mean(two_proportion_ztest(s[:, 0], n, s[:, 1], n).p_value < ALPHA)
    assert in_band(rate), rate


def test_aa_false_positive_rate_of_welch_on_skewed_rewards() -> None:
    rng = np.random.default_rng(7)
    # Revenue-like: mostly zero, gamma when positive; unequal arm sizes.
    def arm(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = rng.gamma(2.0, 10.0, size=(RUNS, size)) * (rng.random((RUNS, size)) < 0.3)
        return np.full(RUNS, float(size)), x.sum(axis=1), (x**2).sum(axis=1)

    rate = np.mean(welch_ttest(*arm(800), *arm(1200)).p_value < ALPHA)
    assert in_band(rate), rate


def test_aa_false_positive_rate_of_chi_square_across_four_arms() -> None:
    rng = np.random.default_rng(99)
    n = np.array([2000, 2000, 1500, 2500])
    s = rng.binomial(n, 0.1, size=(RUNS, 4))
    rate = np.mean(chi_square_test(s, np.broadcast_to(n, s.shape)).p_value < ALPHA)
    assert in_band(rate), rate


def test_aa_false_positive_rate_of_srm() -> None:
    rng = np.random.default_rng(5)
    shares = np.array([0.2, 0.3, 0.5])
    counts = rng.multinomial(10_000, shares, size=RUNS)
    rate = np.mean([srm_test(c, shares).p_value < ALPHA for c in counts])
    assert in_band(rate), rate


# --- errors name the field and the value ---------------------------------------------------


def test_bad_inputs_name_the_field_and_value() -> None:
    with pytest.raises(StatsInputError, match=r"successes_treatment must be <= n_treatment"):
        two_proportion_ztest(1, 10, 11, 10)
    with pytest.raises(StatsInputError, match=r"n_control must be >= 1, but 0"):
        two_proportion_ztest(0, 0, 1, 10)
    with pytest.raises(StatsInputError, match=r"n_treatment must be >= 2 for a t-test"):
        welch_ttest(5, 10.0, 30.0, 1, 2.0, 4.0)
    with pytest.raises(StatsInputError, match=r"alternative must be"):
        two_proportion_ztest(1, 10, 2, 10, alternative="bigger")  # type: ignore[arg-type]
    with pytest.raises(StatsInputError, match=r"observed must be >= 0"):
        srm_test([-1, 5], [0.5, 0.5])
    with pytest.raises(StatsInputError, match=r"every row of period_weights must sum to 1"):
        expected_serve_counts([[0.5, 0.6]], [10])
    with pytest.raises(StatsInputError, match=r"n_control must be finite, but nan"):
        two_proportion_ztest(1, float("nan"), 2, 10)
