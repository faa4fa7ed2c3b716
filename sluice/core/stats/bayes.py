"""Bayesian summaries of K arms: probability each arm is best, probability each beats the
control, and the expected loss of choosing each.

Rates get Beta posteriors (successes + prior_alpha, failures + prior_beta); means get the
Student-t posterior of the mean under the Jeffreys prior (location = sample mean, scale =
sd/√n, df = n - 1). P(best) and the pairwise P(beat control) come from the exact
integrals in `sluice.core.thompson`; the expected loss is a one-dimensional integral
computed here by Gauss–Legendre quadrature on pieces cut at every arm's quantiles.

Expected loss of arm j = E[max_k θ_k - θ_j]: how much reward per event is given up, on
average over the posterior, by choosing j. It is in the metric's own units (a rate
difference for binary rewards), and it is small both when j is surely best and when the
arms are surely equal, which is why it makes a good "safe to stop" threshold.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as sps

from sluice.core.stats.checks import StatsInputError, as_array, as_nonnegative, same_shape
from sluice.core.stats.significance import sample_moments
from sluice.core.thompson import beta_best_probabilities, student_t_best_probabilities

@dataclass(frozen=True)
class BayesianComparison:
    """Per-arm posterior summaries, each of shape (K,): `p_best` sums to 1;
    `p_beat_control[control]` is NaN; `expected_loss` is in reward units per event."""

    p_best: NDArray[np.float64]
    p_beat_control: NDArray[np.float64]
    expected_loss: NDArray[np.float64]
    control: int


def check_control(control: int, k: int) -> int:
    """`control` as an arm index in [0, k)."""
    if isinstance(control, bool) or not isinstance(control, (int, np.integer)) or not 0 <= int(control) < k:
        raise StatsInputError(f"control must be an arm index in [0, {k - 1}], but {control!r} is given")
    return int(control)


# Each arm's posterior is cut at these quantiles; Gauss–Legendre nodes on every piece put
# integration points wherever any posterior lives, however narrow or far from the others.
_CUTS = (1e-12, 1e-9, 1e-6, 1e-4, 1e-2, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1 - 1e-4, 1 - 1e-6, 1 - 1e-9, 1 - 1e-12)
_NODES = 24


@functools.cache
def _legendre() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    return np.polynomial.legendre.leggauss(_NODES)


def _expected_loss(
    cdf: Callable[[NDArray[np.float64]], NDArray[np.float64]], cuts: NDArray[np.float64]
) -> NDArray[np.float64]:
    """E[max_k θ_k − θ_j] = ∫ F_j(x) (1 − ∏_{k≠j} F_k(x)) dx for each j, shape (K,).

    `cdf(x)` maps points (G,) to every arm's CDF there, (K, G); `cuts` are the arms'
    quantiles at `_CUTS`. Outside the outermost cuts the integrand is below K × 1e-12.
    """
    edges = np.unique(cuts[np.isfinite(cuts)])
    if edges.size < 2:
        return np.zeros(cuts.shape[0])
    x0, w0 = _legendre()
    half = np.diff(edges) / 2.0
    mid = edges[:-1] + half
    x = (mid[:, None] + half[:, None] * x0).ravel()
    w = (half[:, None] * w0).ravel()
    f = np.clip(cdf(x), 0.0, 1.0)  # (K, G)
    with np.errstate(divide="ignore"):
        log_f = np.log(f)
    log_all = log_f.sum(axis=0)
    # ∏_{k≠j} F_k as exp(Σ log F − log F_j); where F_j = 0 the integrand is 0 anyway.
    with np.errstate(invalid="ignore"):
        others = np.where(f > 0, np.exp(log_all - np.where(f > 0, log_f, 0.0)), 0.0)
    return np.maximum((f * (1.0 - others)) @ w, 0.0)


def beta_expected_loss(alpha: ArrayLike, beta: ArrayLike) -> NDArray[np.float64]:
    """Expected loss of choosing each arm under independent Beta(alpha_k, beta_k)
    posteriors; arrays of shape (K,), K >= 2, all parameters > 0."""
    a = as_array("alpha", alpha, ndim=1, min_len=2)
    b = as_array("beta", beta, ndim=1, min_len=2)
    same_shape(alpha=a, beta=b)
    if np.any(a <= 0) or np.any(b <= 0):
        raise StatsInputError(f"alpha and beta must be > 0, but {a} and {b} are given")
    cuts = sps.beta.ppf(np.asarray(_CUTS)[None, :], a[:, None], b[:, None])
    return _expected_loss(lambda x: sps.beta.cdf(x[None, :], a[:, None], b[:, None]), cuts)


def student_t_expected_loss(loc: ArrayLike, scale: ArrayLike, df: ArrayLike) -> NDArray[np.float64]:
    """Expected loss of choosing each arm under independent location-scale Student-t
    posteriors; arrays of shape (K,), K >= 2, scale > 0, df > 1 (so the mean exists)."""
    m = as_array("loc", loc, ndim=1, min_len=2)
    s = as_array("scale", scale, ndim=1, min_len=2)
    v = as_array("df", df, ndim=1, min_len=2)
    same_shape(loc=m, scale=s, df=v)
    if np.any(s <= 0):
        raise StatsInputError(f"scale must be > 0, but {s} is given")
    if np.any(v <= 1):
        raise StatsInputError(f"df must be > 1 for the expected loss to exist, but {v} is given")
    cuts = sps.t.ppf(np.asarray(_CUTS)[None, :], v[:, None], m[:, None], s[:, None])
    return _expected_loss(lambda x: sps.t.cdf(x[None, :], v[:, None], m[:, None], s[:, None]), cuts)


def _p_best_beta(alpha: ArrayLike, beta: ArrayLike) -> NDArray[np.float64]:
    return np.asarray(beta_best_probabilities(alpha, beta), dtype=np.float64)


def _p_best_student_t(loc: ArrayLike, scale: ArrayLike, df: ArrayLike) -> NDArray[np.float64]:
    return np.asarray(student_t_best_probabilities(loc, scale, df), dtype=np.float64)


def beta_beat_control(alpha: ArrayLike, beta: ArrayLike, control: int = 0) -> NDArray[np.float64]:
    """P(θ_k > θ_control) for each arm under Beta posteriors, shape (K,), NaN at control."""
    a = as_array("alpha", alpha, ndim=1, min_len=2)
    b = as_array("beta", beta, ndim=1, min_len=2)
    same_shape(alpha=a, beta=b)
    c = check_control(control, a.size)
    out = np.full(a.size, np.nan)
    for k in range(a.size):
        if k != c:
            out[k] = _p_best_beta([a[c], a[k]], [b[c], b[k]])[1]
    return out


def student_t_beat_control(loc: ArrayLike, scale: ArrayLike, df: ArrayLike, control: int = 0) -> NDArray[np.float64]:
    """P(θ_k > θ_control) for each arm under Student-t posteriors, shape (K,), NaN at control."""
    m = as_array("loc", loc, ndim=1, min_len=2)
    s = as_array("scale", scale, ndim=1, min_len=2)
    v = as_array("df", df, ndim=1, min_len=2)
    same_shape(loc=m, scale=s, df=v)
    c = check_control(control, m.size)
    out = np.full(m.size, np.nan)
    for k in range(m.size):
        if k != c:
            out[k] = _p_best_student_t([m[c], m[k]], [s[c], s[k]], [v[c], v[k]])[1]
    return out


def beta_posteriors(
    successes: ArrayLike, n: ArrayLike, prior_alpha: float = 1.0, prior_beta: float = 1.0
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Beta posterior parameters (alpha, beta), each (K,), from successes and events per arm."""
    s = as_nonnegative("successes", successes, ndim=1, min_len=2)
    n_ = as_nonnegative("n", n, ndim=1, min_len=2)
    same_shape(successes=s, n=n_)
    if np.any(s > n_):
        raise StatsInputError(f"successes must be <= n, but {s} > {n_} is given")
    if not (prior_alpha > 0 and prior_beta > 0):
        raise StatsInputError(f"prior_alpha and prior_beta must be > 0, but {prior_alpha!r} and {prior_beta!r} are given")
    return s + prior_alpha, n_ - s + prior_beta


def mean_posteriors(
    n: ArrayLike, sums: ArrayLike, sums_sq: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Student-t posterior (loc, scale, df) of each arm's mean, each (K,); needs n >= 3
    (df > 1) and some spread in every arm."""
    n_ = as_nonnegative("n", n, ndim=1, min_len=2)
    if np.any(n_ < 3):
        raise StatsInputError(f"n must be >= 3 in every arm for a posterior of the mean, but {n_} is given")
    mean, var = sample_moments(n_, sums, sums_sq)
    if np.any(var <= 0):
        raise StatsInputError(f"every arm needs some spread in its rewards, but the variances are {var}")
    return mean, np.sqrt(var / n_), n_ - 1


def bayesian_binary(
    successes: ArrayLike, n: ArrayLike, control: int = 0, prior_alpha: float = 1.0, prior_beta: float = 1.0
) -> BayesianComparison:
    """P(best), P(beat control) and expected loss for K success rates (Beta posteriors;
    uniform prior by default). `successes` and `n` have shape (K,)."""
    a, b = beta_posteriors(successes, n, prior_alpha, prior_beta)
    c = check_control(control, a.size)
    return BayesianComparison(
        p_best=_p_best_beta(a, b),
        p_beat_control=beta_beat_control(a, b, c),
        expected_loss=beta_expected_loss(a, b),
        control=c,
    )


def bayesian_continuous(n: ArrayLike, sums: ArrayLike, sums_sq: ArrayLike, control: int = 0) -> BayesianComparison:
    """P(best), P(beat control) and expected loss for K means (Student-t posteriors) from
    counts, sums and sums of squares, each (K,)."""
    loc, scale, df = mean_posteriors(n, sums, sums_sq)
    c = check_control(control, loc.size)
    return BayesianComparison(
        p_best=_p_best_student_t(loc, scale, df),
        p_beat_control=student_t_beat_control(loc, scale, df, c),
        expected_loss=student_t_expected_loss(loc, scale, df),
        control=c,
    )
