"""Always-valid inference for continuous monitoring: the mixture sequential probability
ratio test (mSPRT) of Johari, Pekelis & Walsh (2017, "Always valid inference").

A fixed-horizon test looked at after every batch of data rejects a true null far more
often than α. The mSPRT compares the likelihood of the observed difference under "no
difference" with its likelihood averaged over a normal mixture of differences,
N(null_difference, mixture_sd²). By Ville's inequality the mixture likelihood ratio Λ
exceeds 1/α at any time with probability at most α under the null, so

- p = min(1, 1/Λ) is a valid p-value at *any* look, however the looks were chosen, and
  the running minimum of p over looks is too (it never increases);
- {θ : Λ(θ) < 1/α} is a confidence interval valid at any look, and the running
  intersection of those intervals is too.

The difference is treated as normal with variance V = var_c/n_c + var_t/n_t (the same
large-sample approximation as the z-test), so this suits rates and means alike once each
arm has a few hundred events. `mixture_sd` is the size of difference the test is tuned to
detect fastest: pick it near the smallest effect worth finding (see `default_mixture_sd`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

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
class SequentialResult:
    """One look of the mSPRT: `estimate` = treatment - control, `log_likelihood_ratio` =
    log Λ (mixture vs null), `p_value` = min(1, 1/Λ), and the always-valid interval for the
    difference at `confidence`."""

    estimate: Number
    log_likelihood_ratio: Number
    p_value: Number
    lower: Number
    upper: Number
    confidence: float
    mixture_sd: float


def msprt(
    n_control: ArrayLike,
    mean_control: ArrayLike,
    variance_control: ArrayLike,
    n_treatment: ArrayLike,
    mean_treatment: ArrayLike,
    variance_treatment: ArrayLike,
    mixture_sd: float,
    confidence: float = 0.95,
    null_difference: float = 0.0,
) -> SequentialResult:
    """The mSPRT p-value and interval for mean_treatment - mean_control at this look.

    Variances are per observation (p(1-p) for a rate). Inputs broadcast: pass arrays with a
    trailing "look" axis to evaluate a whole monitoring path at once, then take
    `running_p_values` / `running_intervals` along it.
    """
    nc = as_nonnegative("n_control", n_control)
    nt = as_nonnegative("n_treatment", n_treatment)
    if np.any(nc < 1) or np.any(nt < 1):
        raise StatsInputError(f"n_control and n_treatment must be >= 1, but {nc} and {nt} are given")
    mc = as_array("mean_control", mean_control)
    mt = as_array("mean_treatment", mean_treatment)
    vc = as_nonnegative("variance_control", variance_control)
    vt = as_nonnegative("variance_treatment", variance_treatment)
    tau = float(mixture_sd)
    if not (np.isfinite(tau) and tau > 0):
        raise StatsInputError(f"mixture_sd must be a positive number, but {mixture_sd!r} is given")
    alpha = 1.0 - check_probability("confidence", confidence)
    tau2 = tau * tau

    d = mt - mc
    v = vc / nc + vt / nt
    exact = v <= 0
    vs = np.where(exact, 1.0, v)  # placeholder where the data have no spread; fixed below
    centred = d - null_difference
    log_lr = 0.5 * np.log(vs / (vs + tau2)) + centred**2 * tau2 / (2.0 * vs * (vs + tau2))
    # No spread at all: the difference is known exactly, so it either is the null or is not.
    log_lr = np.where(exact, np.where(centred == 0, -np.inf, np.inf), log_lr)
    p = np.exp(-np.maximum(log_lr, 0.0))  # Λ <= 1 is no evidence: p = 1
    half = np.sqrt(vs * (vs + tau2) / tau2 * (np.log((vs + tau2) / vs) - 2.0 * np.log(alpha)))
    half = np.where(exact, 0.0, half)
    return SequentialResult(
        estimate=scalar_or_array(d),
        log_likelihood_ratio=scalar_or_array(log_lr),
        p_value=scalar_or_array(p),
        lower=scalar_or_array(d - half),
        upper=scalar_or_array(d + half),
        confidence=float(confidence),
        mixture_sd=tau,
    )


def msprt_proportions(
    successes_control: ArrayLike,
    n_control: ArrayLike,
    successes_treatment: ArrayLike,
    n_treatment: ArrayLike,
    mixture_sd: float,
    confidence: float = 0.95,
) -> SequentialResult:
    """`msprt` for two success rates given counts (variance p(1-p) per arm)."""
    sc = as_nonnegative("successes_control", successes_control)
    nc = as_nonnegative("n_control", n_control)
    st = as_nonnegative("successes_treatment", successes_treatment)
    nt = as_nonnegative("n_treatment", n_treatment)
    if np.any(sc > nc) or np.any(st > nt):
        raise StatsInputError("successes_control and successes_treatment must not exceed their n")
    with np.errstate(divide="ignore", invalid="ignore"):
        pc = np.where(nc > 0, sc / nc, 0.0)
        pt = np.where(nt > 0, st / nt, 0.0)
    return msprt(nc, pc, pc * (1 - pc), nt, pt, pt * (1 - pt), mixture_sd, confidence)


def msprt_means(
    n_control: ArrayLike,
    sum_control: ArrayLike,
    sum_sq_control: ArrayLike,
    n_treatment: ArrayLike,
    sum_treatment: ArrayLike,
    sum_sq_treatment: ArrayLike,
    mixture_sd: float,
    confidence: float = 0.95,
) -> SequentialResult:
    """`msprt` for two means given counts, sums and sums of squares."""
    mc, vc = sample_moments(n_control, sum_control, sum_sq_control)
    mt, vt = sample_moments(n_treatment, sum_treatment, sum_sq_treatment)
    return msprt(n_control, mc, vc, n_treatment, mt, vt, mixture_sd, confidence)


def running_p_values(p_values: ArrayLike) -> NDArray[np.float64]:
    """The always-valid p-value path: running minimum along the last (look) axis."""
    return np.minimum.accumulate(as_array("p_values", p_values), axis=-1)


def running_intervals(lower: ArrayLike, upper: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The always-valid interval path: running intersection along the last (look) axis."""
    lo = np.maximum.accumulate(as_array("lower", lower), axis=-1)
    hi = np.minimum.accumulate(as_array("upper", upper), axis=-1)
    return lo, hi


def default_mixture_sd(control_mean: float, pooled_sd: float, relative_effect: float = 0.03) -> float:
    """A mixture sd tuned to the smallest effect worth finding.

    `relative_effect` × |control_mean| when that is positive (the test then reaches a
    verdict fastest for effects of that size); otherwise 1 % of the pooled per-observation
    sd, and 1e-9 if even that is 0, so the test stays defined. Effects are floored at 1 %
    relative: tuning for "no effect at all" would make the test never reject.
    """
    effect = max(float(relative_effect), 0.01) * abs(float(control_mean))
    if effect > 0 and np.isfinite(effect):
        return effect
    fallback = 0.01 * abs(float(pooled_sd))
    return fallback if fallback > 0 and np.isfinite(fallback) else 1e-9
