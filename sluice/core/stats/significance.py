"""Fixed-horizon significance tests: two proportions, Welch's t, chi-square across arms, SRM.

Every two-sample test compares a treatment with a control and reports treatment minus
control. Inputs broadcast: pass scalars for one comparison, or equal-shaped arrays (one
entry per comparison or per simulated experiment) and every field of the result has that
shape. "Fixed-horizon" means valid when looked at once, at a sample size chosen in advance;
for continuous monitoring use `sluice.core.sequential`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as sps

from sluice.core.stats.checks import StatsInputError, as_array, as_nonnegative, scalar_or_array

Alternative = Literal["two-sided", "larger", "smaller"]
"""The alternative hypothesis: treatment differs from, exceeds, or falls short of control."""

Number = float | NDArray[np.float64]


@dataclass(frozen=True)
class SignificanceResult:
    """A test of treatment vs control: `estimate` is treatment minus control (a rate or a
    mean), `statistic` the z or t value, `df` the degrees of freedom (None for z tests)."""

    estimate: Number
    statistic: Number
    p_value: Number
    df: Number | None = None


@dataclass(frozen=True)
class ChiSquareResult:
    """A chi-square test with `df` degrees of freedom; `expected` holds the counts under the
    null (shape of the observed table)."""

    statistic: Number
    p_value: Number
    df: int
    expected: NDArray[np.float64]


def sample_moments(n: ArrayLike, sums: ArrayLike, sums_sq: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and unbiased variance (ddof = 1) from counts, sums and sums of squares.

    Shapes broadcast; arms with n < 2 get variance 0. Rounding can make sum_sq - sum²/n
    slightly negative for constant data, so the variance is clipped at 0.
    """
    n_ = as_nonnegative("n", n)
    s = as_array("sums", sums)
    ss = as_nonnegative("sums_sq", sums_sq)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n_ > 0, s / np.maximum(n_, 1), 0.0)
        var = np.where(n_ > 1, (ss - s * mean) / np.maximum(n_ - 1, 1), 0.0)
    return mean, np.maximum(var, 0.0)


def _p_from_z(z: NDArray[np.float64], alternative: Alternative) -> NDArray[np.float64]:
    if alternative == "two-sided":
        return 2.0 * sps.norm.sf(np.abs(z))
    if alternative == "larger":
        return sps.norm.sf(z)
    if alternative == "smaller":
        return sps.norm.cdf(z)
    raise StatsInputError(f"alternative must be 'two-sided', 'larger' or 'smaller', but {alternative!r} is given")


def _p_from_t(t: NDArray[np.float64], df: NDArray[np.float64], alternative: Alternative) -> NDArray[np.float64]:
    if alternative == "two-sided":
        return 2.0 * sps.t.sf(np.abs(t), df)
    if alternative == "larger":
        return sps.t.sf(t, df)
    if alternative == "smaller":
        return sps.t.cdf(t, df)
    raise StatsInputError(f"alternative must be 'two-sided', 'larger' or 'smaller', but {alternative!r} is given")


def _ratio(diff: NDArray[np.float64], se: NDArray[np.float64]) -> NDArray[np.float64]:
    # With no spread at all the data are exact: equal means are no evidence (statistic 0),
    # different ones are certain (statistic ±inf).
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(se > 0, diff / np.where(se > 0, se, 1.0), np.where(diff == 0, 0.0, np.sign(diff) * np.inf))


def _check_successes(name: str, successes: NDArray[np.float64], n_name: str, n: NDArray[np.float64]) -> None:
    if np.any(successes > n):
        raise StatsInputError(f"{name} must be <= {n_name}, but {successes} > {n} is given")


def two_proportion_ztest(
    successes_control: ArrayLike,
    n_control: ArrayLike,
    successes_treatment: ArrayLike,
    n_treatment: ArrayLike,
    alternative: Alternative = "two-sided",
) -> SignificanceResult:
    """Two-proportion z-test of H0: p_treatment = p_control, with the pooled variance.

    Counts are events (trials) and successes per arm; every n must be >= 1.
    """
    sc = as_nonnegative("successes_control", successes_control)
    nc = as_nonnegative("n_control", n_control)
    st = as_nonnegative("successes_treatment", successes_treatment)
    nt = as_nonnegative("n_treatment", n_treatment)
    for name, n in (("n_control", nc), ("n_treatment", nt)):
        if np.any(n < 1):
            raise StatsInputError(f"{name} must be >= 1, but {n} is given")
    _check_successes("successes_control", sc, "n_control", nc)
    _check_successes("successes_treatment", st, "n_treatment", nt)
    diff = st / nt - sc / nc
    pooled = (sc + st) / (nc + nt)
    se = np.sqrt(pooled * (1.0 - pooled) * (1.0 / nc + 1.0 / nt))
    z = _ratio(diff, se)
    return SignificanceResult(scalar_or_array(diff), scalar_or_array(z), scalar_or_array(_p_from_z(z, alternative)))


def welch_ttest(
    n_control: ArrayLike,
    sum_control: ArrayLike,
    sum_sq_control: ArrayLike,
    n_treatment: ArrayLike,
    sum_treatment: ArrayLike,
    sum_sq_treatment: ArrayLike,
    alternative: Alternative = "two-sided",
) -> SignificanceResult:
    """Welch's unequal-variance t-test of H0: mean_treatment = mean_control.

    Each arm is given by its count, sum of rewards and sum of squared rewards (the mergeable
    sufficient statistics); every n must be >= 2. Degrees of freedom by Welch–Satterthwaite.
    """
    nc = as_nonnegative("n_control", n_control)
    nt = as_nonnegative("n_treatment", n_treatment)
    for name, n in (("n_control", nc), ("n_treatment", nt)):
        if np.any(n < 2):
            raise StatsInputError(f"{name} must be >= 2 for a t-test, but {n} is given")
    mc, vc = sample_moments(nc, sum_control, sum_sq_control)
    mt, vt = sample_moments(nt, sum_treatment, sum_sq_treatment)
    ac, at = vc / nc, vt / nt
    diff = mt - mc
    se = np.sqrt(ac + at)
    t = _ratio(diff, se)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (ac + at) ** 2 / (ac**2 / (nc - 1) + at**2 / (nt - 1))
    # Zero variance in both arms leaves df undefined; any df gives the same p for t = 0 or ±inf.
    df = np.where(np.isfinite(df), df, nc + nt - 2)
    p = _p_from_t(t, df, alternative)
    return SignificanceResult(scalar_or_array(diff), scalar_or_array(t), scalar_or_array(p), scalar_or_array(df))


def _pearson(observed: NDArray[np.float64], expected: NDArray[np.float64], axis: tuple[int, ...]) -> NDArray[np.float64]:
    # A cell expected to be empty and observed empty carries no information.
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(expected > 0, (observed - expected) ** 2 / np.where(expected > 0, expected, 1.0), 0.0)
        terms = np.where((expected == 0) & (observed > 0), np.inf, terms)
    return np.sum(terms, axis=axis)


def chi_square_test(successes: ArrayLike, n: ArrayLike) -> ChiSquareResult:
    """Pearson chi-square test that K arms share one success rate (a 2 × K table, no
    continuity correction), df = K - 1.

    `successes` and `n` have shape (..., K): the last axis is the arms, leading axes are
    independent tables (e.g. simulated experiments). `expected` has shape (..., 2, K):
    successes then failures.
    """
    s = as_nonnegative("successes", successes, min_len=2)
    n_ = as_nonnegative("n", n, min_len=2)
    if s.shape != n_.shape or s.ndim == 0:
        raise StatsInputError(f"successes and n must be arrays of the same shape (..., K), but got {s.shape} and {n_.shape}")
    _check_successes("successes", s, "n", n_)
    table = np.stack([s, n_ - s], axis=-2)  # (..., 2, K)
    total = n_.sum(axis=-1)[..., None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.where(total > 0, table.sum(axis=-1, keepdims=True) * table.sum(axis=-2, keepdims=True) / total, 0.0)
    stat = _pearson(table, expected, axis=(-2, -1))
    df = s.shape[-1] - 1
    return ChiSquareResult(scalar_or_array(stat), scalar_or_array(sps.chi2.sf(stat, df)), df, expected)


def expected_serve_counts(period_weights: ArrayLike, period_serves: ArrayLike) -> NDArray[np.float64]:
    """Serves each arm should have received, given the weights in force in each period.

    `period_weights` has shape (P, K) (each row sums to 1: the selection probabilities of
    that period's weight table), `period_serves` shape (P,) (all serves in the period).
    Returns shape (K,): Σ_p serves_p · weights_pk. For a static A/B test pass one period.
    With one row per serve and serves 1, this is the sum of logged propensities.
    """
    w = as_nonnegative("period_weights", period_weights, ndim=2)
    m = as_nonnegative("period_serves", period_serves, ndim=1)
    if w.shape[0] != m.shape[0]:
        raise StatsInputError(
            f"period_weights must have one row per period ({m.shape[0]}), but has {w.shape[0]} rows"
        )
    sums = w.sum(axis=1)
    if np.any(np.abs(sums - 1.0) > 1e-6):
        raise StatsInputError(f"every row of period_weights must sum to 1, but the row sums are {sums}")
    return m @ w


def srm_test(observed: ArrayLike, expected: ArrayLike) -> ChiSquareResult:
    """Sample ratio mismatch: chi-square goodness of fit of serve counts to expectations.

    `observed` (K,) are serves per arm; `expected` (K,) are expected serves or shares (scaled
    to the observed total). Arms expected to get nothing and getting nothing are left out
    of the degrees of freedom; an arm served while expected to get nothing makes p = 0.
    For bandits pass `expected_serve_counts(...)`: the weights changed over time, so each
    period is its own multinomial; the Pearson statistic is then slightly conservative.
    """
    o = as_nonnegative("observed", observed, ndim=1, min_len=2)
    e = as_nonnegative("expected", expected, ndim=1, min_len=2)
    if o.shape != e.shape:
        raise StatsInputError(f"observed and expected must have one entry per arm, but got {o.size} and {e.size}")
    if e.sum() <= 0:
        raise StatsInputError(f"expected must have a positive total, but {e} is given")
    e = e * (o.sum() / e.sum())
    stat = float(_pearson(o, e, axis=(0,)))
    live = int(np.sum((e > 0) | (o > 0)))
    df = max(live - 1, 1)
    return ChiSquareResult(stat, float(sps.chi2.sf(stat, df)), df, e)
