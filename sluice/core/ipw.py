"""Arm means from bandit-collected data: inverse-propensity weighting next to the naive mean.

A bandit serves an arm more when it looks good, and its weights change over time. The
naive per-arm mean then describes the periods and units the arm happened to be served to,
not the whole population: if an arm got most of its traffic in hours when everyone
converts more, its naive mean is inflated. Weighting each served event by 1 / propensity
(the probability its arm had when it was assigned) recovers the mean the arm would have
had if it had been served to every unit in the window (Horvitz–Thompson). That estimate
stays unbiased when the weights were chosen from earlier data, because each propensity
is fixed before its event is drawn.

Inputs are per-period sufficient statistics, shape (P, K): P periods (e.g. the hourly
buckets of the window, each with the weight table in force), K arms. The caller must split
periods wherever the weights changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as sps

from sluice.core.stats.checks import StatsInputError, as_array, as_nonnegative, check_probability


@dataclass(frozen=True)
class IpwEstimate:
    """Per-arm means, each of shape (K,), with two-sided intervals at `confidence`.

    `naive_*`: the plain mean of the rewards each arm received. `ipw_*`: the
    inverse-propensity-weighted (Horvitz–Thompson) mean over all `total` served events.
    `n`: events served per arm.
    """

    naive_mean: NDArray[np.float64]
    naive_lower: NDArray[np.float64]
    naive_upper: NDArray[np.float64]
    ipw_mean: NDArray[np.float64]
    ipw_lower: NDArray[np.float64]
    ipw_upper: NDArray[np.float64]
    n: NDArray[np.float64]
    total: float
    confidence: float


def ipw_means(
    period_weights: ArrayLike,
    period_serves: ArrayLike,
    period_sums: ArrayLike,
    period_sums_sq: ArrayLike,
    confidence: float = 0.95,
) -> IpwEstimate:
    """Naive and inverse-propensity-weighted mean reward of each arm, with intervals.

    `period_weights[p, k]`: arm k's selection probability in period p; `period_serves`,
    `period_sums`, `period_sums_sq`: events served, reward sum and sum of squared rewards
    of arm k in period p (for 0/1 rewards sums_sq = sums). All shape (P, K).

    The IPW interval uses the sample variance of the weighted terms 1[arm = k]·r/π over
    all events; when the true means drift between periods this variance includes the
    drift, so the interval is, if anything, conservative.
    """
    z = float(sps.norm.ppf(0.5 + check_probability("confidence", confidence) / 2.0))
    w = as_nonnegative("period_weights", period_weights, ndim=2)
    n = as_nonnegative("period_serves", period_serves, ndim=2)
    s = as_array("period_sums", period_sums, ndim=2)
    ss = as_nonnegative("period_sums_sq", period_sums_sq, ndim=2)
    shapes = {w.shape, n.shape, s.shape, ss.shape}
    if len(shapes) != 1:
        raise StatsInputError(
            "period_weights, period_serves, period_sums and period_sums_sq must share one shape (P, K), "
            f"but got {w.shape}, {n.shape}, {s.shape}, {ss.shape}"
        )
    if np.any(w > 1):
        raise StatsInputError(f"period_weights must be probabilities in [0, 1], but the largest is {w.max()}")
    served_unweighted = (w == 0) & (n > 0)
    if np.any(served_unweighted):
        p, k = (int(i) for i in np.argwhere(served_unweighted)[0])
        raise StatsInputError(
            f"period_weights[{p}, {k}] is 0, but arm {k} was served {n[p, k]:g} times in period {p}: "
            "propensities must be the probabilities the serves were drawn with"
        )
    total = float(n.sum())
    if total < 2:
        raise StatsInputError(f"period_serves must add up to at least 2 events, but {total:g} are given")

    n_arm = n.sum(axis=0)
    sum_arm = s.sum(axis=0)
    sum_sq_arm = ss.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        naive = np.where(n_arm > 0, sum_arm / n_arm, np.nan)
        naive_var = np.where(n_arm > 1, (sum_sq_arm - sum_arm * naive) / (n_arm - 1), np.nan)
        naive_half = z * np.sqrt(np.maximum(naive_var, 0.0) / n_arm)

        safe_w = np.where(w > 0, w, 1.0)
        weighted_sum = np.sum(np.where(n > 0, s / safe_w, 0.0), axis=0)
        weighted_sum_sq = np.sum(np.where(n > 0, ss / safe_w**2, 0.0), axis=0)
    ipw = weighted_sum / total
    ipw_var = np.maximum(weighted_sum_sq - total * ipw**2, 0.0) / (total - 1)
    ipw_half = z * np.sqrt(ipw_var / total)
    return IpwEstimate(
        naive_mean=naive,
        naive_lower=naive - naive_half,
        naive_upper=naive + naive_half,
        ipw_mean=ipw,
        ipw_lower=ipw - ipw_half,
        ipw_upper=ipw + ipw_half,
        n=n_arm,
        total=total,
        confidence=float(confidence),
    )
