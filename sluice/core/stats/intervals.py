"""Confidence intervals: Wilson for a rate, Newcombe for a difference of rates, Student t
for a mean and Welch for a difference of means, the delta method for relative uplift.

Differences and uplifts are treatment relative to control. Inputs broadcast like the tests
in `significance`: scalars give floats, equal-shaped arrays give arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as sps

from sluice.core.stats.checks import (
    StatsInputError,
    as_array,
    as_nonnegative,
    check_probability,
    scalar_or_array,
)
from sluice.core.stats.significance import sample_moments

Number = float | NDArray[np.float64]


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided interval at `confidence` (e.g. 0.95)."""

    estimate: Number
    lower: Number
    upper: Number
    confidence: float


def _z(confidence: float) -> float:
    return float(sps.norm.ppf(0.5 + check_probability("confidence", confidence) / 2.0))


def _rates(successes: ArrayLike, n: ArrayLike, s_name: str, n_name: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    s = as_nonnegative(s_name, successes)
    n_ = as_nonnegative(n_name, n)
    if np.any(n_ < 1):
        raise StatsInputError(f"{n_name} must be >= 1, but {n_} is given")
    if np.any(s > n_):
        raise StatsInputError(f"{s_name} must be <= {n_name}, but {s} > {n_} is given")
    return s, n_


def _wilson(s: NDArray[np.float64], n: NDArray[np.float64], z: float) -> tuple[NDArray[np.float64], ...]:
    p = s / n
    z2n = z * z / n
    center = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * np.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n))
    # At 0 or n successes the bound is exactly 0 or 1; computing it leaves rounding dust.
    lower = np.where(s == 0, 0.0, np.clip(center - half, 0.0, 1.0))
    upper = np.where(s == n, 1.0, np.clip(center + half, 0.0, 1.0))
    return p, lower, upper


def wilson_interval(successes: ArrayLike, n: ArrayLike, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a success rate: stays inside [0, 1] and keeps its coverage
    near 0 and 1, where the Wald interval fails."""
    s, n_ = _rates(successes, n, "successes", "n")
    p, lo, hi = _wilson(s, n_, _z(confidence))
    return Interval(scalar_or_array(p), scalar_or_array(lo), scalar_or_array(hi), confidence)


def newcombe_interval(
    successes_control: ArrayLike,
    n_control: ArrayLike,
    successes_treatment: ArrayLike,
    n_treatment: ArrayLike,
    confidence: float = 0.95,
) -> Interval:
    """Newcombe's hybrid score interval for p_treatment - p_control, built from the two
    Wilson intervals (Newcombe 1998, method 10)."""
    sc, nc = _rates(successes_control, n_control, "successes_control", "n_control")
    st, nt = _rates(successes_treatment, n_treatment, "successes_treatment", "n_treatment")
    z = _z(confidence)
    pc, lc, uc = _wilson(sc, nc, z)
    pt, lt, ut = _wilson(st, nt, z)
    d = pt - pc
    lower = d - np.sqrt((pt - lt) ** 2 + (uc - pc) ** 2)
    upper = d + np.sqrt((ut - pt) ** 2 + (pc - lc) ** 2)
    return Interval(scalar_or_array(d), scalar_or_array(lower), scalar_or_array(upper), confidence)


def mean_interval(n: ArrayLike, sums: ArrayLike, sums_sq: ArrayLike, confidence: float = 0.95) -> Interval:
    """Student t interval for a mean from count, sum and sum of squares (n >= 2)."""
    n_ = as_nonnegative("n", n)
    if np.any(n_ < 2):
        raise StatsInputError(f"n must be >= 2 for an interval of a mean, but {n_} is given")
    check_probability("confidence", confidence)
    mean, var = sample_moments(n_, sums, sums_sq)
    half = sps.t.ppf(0.5 + confidence / 2.0, n_ - 1) * np.sqrt(var / n_)
    return Interval(scalar_or_array(mean), scalar_or_array(mean - half), scalar_or_array(mean + half), confidence)


def welch_interval(
    n_control: ArrayLike,
    sum_control: ArrayLike,
    sum_sq_control: ArrayLike,
    n_treatment: ArrayLike,
    sum_treatment: ArrayLike,
    sum_sq_treatment: ArrayLike,
    confidence: float = 0.95,
) -> Interval:
    """Welch interval for mean_treatment - mean_control (Welch–Satterthwaite df); the
    interval that matches `welch_ttest`."""
    nc = as_nonnegative("n_control", n_control)
    nt = as_nonnegative("n_treatment", n_treatment)
    for name, n in (("n_control", nc), ("n_treatment", nt)):
        if np.any(n < 2):
            raise StatsInputError(f"{name} must be >= 2 for a Welch interval, but {n} is given")
    check_probability("confidence", confidence)
    mc, vc = sample_moments(nc, sum_control, sum_sq_control)
    mt, vt = sample_moments(nt, sum_treatment, sum_sq_treatment)
    ac, at = vc / nc, vt / nt
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (ac + at) ** 2 / (ac**2 / (nc - 1) + at**2 / (nt - 1))
    df = np.where(np.isfinite(df), df, nc + nt - 2)
    half = sps.t.ppf(0.5 + confidence / 2.0, df) * np.sqrt(ac + at)
    d = mt - mc
    return Interval(scalar_or_array(d), scalar_or_array(d - half), scalar_or_array(d + half), confidence)


def relative_uplift_interval(
    n_control: ArrayLike,
    mean_control: ArrayLike,
    variance_control: ArrayLike,
    n_treatment: ArrayLike,
    mean_treatment: ArrayLike,
    variance_treatment: ArrayLike,
    confidence: float = 0.95,
) -> Interval:
    """Delta-method interval for the relative uplift mean_treatment / mean_control - 1.

    Variances are per observation (p(1-p) for a rate). First-order expansion of the ratio:
    Var(m_t/m_c) ≈ v_t/(n_t m_c²) + m_t² v_c/(n_c m_c⁴). Needs mean_control ≠ 0; trustworthy
    when the control mean is many standard errors away from 0 (large samples).
    """
    nc = as_nonnegative("n_control", n_control)
    nt = as_nonnegative("n_treatment", n_treatment)
    mc = as_array("mean_control", mean_control)
    mt = as_array("mean_treatment", mean_treatment)
    vc = as_nonnegative("variance_control", variance_control)
    vt = as_nonnegative("variance_treatment", variance_treatment)
    if np.any(nc < 1) or np.any(nt < 1):
        raise StatsInputError(f"n_control and n_treatment must be >= 1, but {nc} and {nt} are given")
    if np.any(mc == 0):
        raise StatsInputError(f"mean_control must be non-zero for a relative uplift, but {mc} is given")
    z = _z(confidence)
    uplift = mt / mc - 1.0
    se = np.sqrt(vt / (nt * mc**2) + mt**2 * vc / (nc * mc**4))
    return Interval(scalar_or_array(uplift), scalar_or_array(uplift - z * se), scalar_or_array(uplift + z * se), confidence)
