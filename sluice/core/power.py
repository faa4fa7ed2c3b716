"""Sizing an experiment: events per arm needed to detect a given effect, and the power a
given size buys.

Each treatment is compared with one control by a two-sided test (the two-proportion
z-test for rates, a z/Welch test for means), all arms get equal traffic, and with K arms
the K - 1 comparisons share α by Bonferroni (α / (K - 1) each) — what Holm's procedure
needs for its first, strictest step, so the size is enough under Holm too.

Power here counts both tails of the test, and the sample size solves power(n) = target
exactly (then rounds up), starting from the usual closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from scipy import optimize
from scipy import stats as sps

from sluice.core.stats.checks import StatsInputError, check_probability

MetricKind = Literal["binary", "continuous"]


@dataclass(frozen=True)
class SampleSize:
    """The size of an experiment.

    `per_arm` events for each of `n_arms` arms (`total` in all) detect a move from
    `baseline` to `treatment` (absolute difference `effect`) with probability
    `achieved_power` >= the requested `power`, at family-wise level `alpha`
    (`alpha_per_comparison` per treatment-control test).
    """

    per_arm: int
    total: int
    n_arms: int
    baseline: float
    treatment: float
    effect: float
    alpha: float
    alpha_per_comparison: float
    power: float
    achieved_power: float


@dataclass(frozen=True)
class _Design:
    baseline: float
    treatment: float
    sd_null: float  # per-observation sd of the difference's numerator under H0 (× √(1/n))
    sd_alt: float  # same under the alternative
    alpha_each: float


def _design(
    baseline: float, mde: float, alpha: float, n_arms: int, kind: MetricKind, sd: float | None, relative: bool
) -> _Design:
    if not isinstance(n_arms, int) or n_arms < 2:
        raise StatsInputError(f"n_arms must be an integer >= 2, but {n_arms!r} is given")
    check_probability("alpha", alpha)
    try:
        base, effect_in = float(baseline), float(mde)
    except (TypeError, ValueError):
        raise StatsInputError(f"baseline and mde must be numbers, but {baseline!r} and {mde!r} are given") from None
    if not math.isfinite(effect_in) or effect_in == 0:
        raise StatsInputError(f"mde must be a non-zero number, but {mde!r} is given")
    treatment = base * (1.0 + effect_in) if relative else base + effect_in
    alpha_each = alpha / (n_arms - 1)
    if kind == "binary":
        check_probability("baseline", base)
        if not 0.0 < treatment < 1.0:
            raise StatsInputError(
                f"mde must move the baseline rate {base} to a rate inside (0, 1), but it gives {treatment}"
            )
        mean_rate = (base + treatment) / 2.0
        sd_null = math.sqrt(2.0 * mean_rate * (1.0 - mean_rate))
        sd_alt = math.sqrt(base * (1.0 - base) + treatment * (1.0 - treatment))
        return _Design(base, treatment, sd_null, sd_alt, alpha_each)
    if kind == "continuous":
        if sd is None or not (math.isfinite(float(sd)) and float(sd) > 0):
            raise StatsInputError(f"sd must be a positive number for a continuous metric, but {sd!r} is given")
        if relative and base == 0:
            raise StatsInputError("baseline must be non-zero when mde is relative, but 0 is given")
        s = math.sqrt(2.0) * float(sd)
        return _Design(base, treatment, s, s, alpha_each)
    raise StatsInputError(f"kind must be 'binary' or 'continuous', but {kind!r} is given")


def _power(n: float, d: _Design) -> float:
    z = sps.norm.isf(d.alpha_each / 2.0)
    shift = abs(d.treatment - d.baseline) * math.sqrt(n)
    upper = sps.norm.cdf((shift - z * d.sd_null) / d.sd_alt)
    lower = sps.norm.cdf((-shift - z * d.sd_null) / d.sd_alt)
    return float(upper + lower)


def power_at(
    n_per_arm: float,
    baseline: float,
    mde: float,
    *,
    alpha: float = 0.05,
    n_arms: int = 2,
    kind: MetricKind = "binary",
    sd: float | None = None,
    relative: bool = True,
) -> float:
    """Probability that a treatment with the given effect is declared significant when each
    arm has `n_per_arm` events. Arguments as in `sample_size`."""
    if not (math.isfinite(float(n_per_arm)) and float(n_per_arm) > 0):
        raise StatsInputError(f"n_per_arm must be a positive number, but {n_per_arm!r} is given")
    return _power(float(n_per_arm), _design(baseline, mde, alpha, n_arms, kind, sd, relative))


def _solve(d: _Design, power: float) -> float:
    target = check_probability("power", power)
    if target <= d.alpha_each:
        raise StatsInputError(f"power must exceed alpha per comparison ({d.alpha_each}), but {power!r} is given")
    z_a = sps.norm.isf(d.alpha_each / 2.0)
    z_b = sps.norm.ppf(target)
    closed_form = ((z_a * d.sd_null + z_b * d.sd_alt) / abs(d.treatment - d.baseline)) ** 2
    # The closed form ignores the test's far tail, so it slightly overestimates: the root
    # lies in (0, closed_form].
    if _power(closed_form, d) - target <= 0:
        return closed_form
    return float(optimize.brentq(lambda n: _power(n, d) - target, 1e-9, closed_form, xtol=1e-9, rtol=1e-12))


def sample_size(
    baseline: float,
    mde: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    n_arms: int = 2,
    kind: MetricKind = "binary",
    sd: float | None = None,
    relative: bool = True,
) -> SampleSize:
    """Events per arm to detect a minimum detectable effect `mde` with probability `power`.

    `baseline` is the control's rate (binary, in (0, 1)) or mean (continuous, then `sd` is
    the per-observation standard deviation). `mde` is relative (0.05 = +5 %) unless
    `relative=False`, then it is an absolute difference. `alpha` is family-wise, two-sided.
    """
    d = _design(baseline, mde, alpha, n_arms, kind, sd, relative)
    per_arm = max(2, math.ceil(_solve(d, power) - 1e-9))
    return SampleSize(
        per_arm=per_arm,
        total=per_arm * n_arms,
        n_arms=n_arms,
        baseline=d.baseline,
        treatment=d.treatment,
        effect=d.treatment - d.baseline,
        alpha=float(alpha),
        alpha_per_comparison=d.alpha_each,
        power=float(power),
        achieved_power=_power(per_arm, d),
    )


def exact_sample_size(
    baseline: float,
    mde: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    n_arms: int = 2,
    kind: MetricKind = "binary",
    sd: float | None = None,
    relative: bool = True,
) -> float:
    """The unrounded solution n of power(n) = `power`; arguments as in `sample_size`."""
    return _solve(_design(baseline, mde, alpha, n_arms, kind, sd, relative), power)
