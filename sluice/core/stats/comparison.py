"""Everything one comparison of K arms needs, computed in one call.

`ArmData` holds per-arm counts (binary rewards: successes; continuous: sums and sums of
squares). `compare` returns each arm's mean with its interval, P(best), P(beat control)
and expected loss; each treatment's difference from control with the fixed-horizon test,
its Holm and Benjamini–Hochberg adjustments, the always-valid (mSPRT) p-value and
interval, and the relative uplift with its delta-method interval; the chi-square test
across arms (binary) and, given expected serves, the SRM test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sluice.core.sequential import default_mixture_sd, msprt
from sluice.core.stats.checks import StatsInputError, as_array, as_nonnegative, check_probability
from sluice.core.stats.bayes import BayesianComparison, bayesian_binary, bayesian_continuous, check_control
from sluice.core.stats.intervals import (
    mean_interval,
    newcombe_interval,
    relative_uplift_interval,
    welch_interval,
    wilson_interval,
)
from sluice.core.stats.multiple import benjamini_hochberg_adjust, holm_adjust
from sluice.core.stats.significance import (
    ChiSquareResult,
    chi_square_test,
    sample_moments,
    srm_test,
    two_proportion_ztest,
    welch_ttest,
)

MetricKind = Literal["binary", "continuous"]


@dataclass(frozen=True)
class ArmData:
    """Per-arm outcome counts, every array of shape (K,), K >= 2.

    `n`: events per arm (serves whose reward window has closed). Binary rewards give
    `successes`; continuous rewards give `sums` and `sums_sq` (sum of rewards and of
    squared rewards). Build with `ArmData.binary(...)` or `ArmData.continuous(...)`.
    """

    n: NDArray[np.float64]
    successes: NDArray[np.float64] | None = None
    sums: NDArray[np.float64] | None = None
    sums_sq: NDArray[np.float64] | None = None
    names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        n = as_nonnegative("n", self.n, ndim=1, min_len=2)
        k = n.size
        object.__setattr__(self, "n", n)
        if (self.successes is None) == (self.sums is None and self.sums_sq is None):
            raise StatsInputError("give either successes (binary rewards) or sums and sums_sq (continuous), not both or neither")
        for name in ("successes", "sums", "sums_sq"):
            value = getattr(self, name)
            if value is None:
                continue
            arr = as_array(name, value, ndim=1) if name == "sums" else as_nonnegative(name, value, ndim=1)
            if arr.size != k:
                raise StatsInputError(f"{name} must have one entry per arm ({k}), but has {arr.size}")
            object.__setattr__(self, name, arr)
        if self.successes is None and (self.sums is None or self.sums_sq is None):
            raise StatsInputError("continuous rewards need both sums and sums_sq")
        if self.successes is not None and np.any(self.successes > n):
            raise StatsInputError(f"successes must be <= n in every arm, but {self.successes} > {n} is given")
        names = tuple(str(x) for x in self.names) if self.names else tuple(f"arm{i}" for i in range(k))
        if len(names) != k:
            raise StatsInputError(f"names must have one entry per arm ({k}), but has {len(names)}: {list(names)}")
        if len(set(names)) != k:
            raise StatsInputError(f"names must be unique, but {list(names)} is given")
        object.__setattr__(self, "names", names)

    @classmethod
    def binary(cls, n: ArrayLike, successes: ArrayLike, names: Sequence[str] = ()) -> ArmData:
        """Per-arm events and successes (0/1 rewards)."""
        return cls(n=np.asarray(n), successes=np.asarray(successes), names=tuple(names))

    @classmethod
    def continuous(cls, n: ArrayLike, sums: ArrayLike, sums_sq: ArrayLike, names: Sequence[str] = ()) -> ArmData:
        """Per-arm events, reward sums and sums of squared rewards."""
        return cls(n=np.asarray(n), sums=np.asarray(sums), sums_sq=np.asarray(sums_sq), names=tuple(names))

    @property
    def kind(self) -> MetricKind:
        return "binary" if self.successes is not None else "continuous"

    @property
    def k(self) -> int:
        return int(self.n.size)

    def moments(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Mean and per-observation variance of each arm, (K,) each: p and p(1-p) for
        rates, sample mean and unbiased variance for continuous rewards."""
        if self.successes is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                p = np.where(self.n > 0, self.successes / np.maximum(self.n, 1), 0.0)
            return p, p * (1.0 - p)
        return sample_moments(self.n, *self.sums_and_squares())

    def sums_and_squares(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """`sums` and `sums_sq` of continuous rewards (an error for binary data)."""
        if self.sums is None or self.sums_sq is None:
            raise StatsInputError("these are binary rewards: they have successes, not sums and sums_sq")
        return self.sums, self.sums_sq

    @property
    def min_events_for_comparison(self) -> int:
        """Fewest events per arm `compare` accepts: 1 for rates, 3 for means (a variance
        and a Student-t posterior with a finite mean)."""
        return 1 if self.kind == "binary" else 3


@dataclass(frozen=True)
class ArmSummary:
    """One arm: its mean and interval, P(best), P(beat control) (NaN for the control) and
    expected loss (reward units per event)."""

    name: str
    n: float
    mean: float
    lower: float
    upper: float
    p_best: float
    p_beat_control: float
    expected_loss: float


@dataclass(frozen=True)
class Contrast:
    """One treatment against the control.

    `difference` = mean_treatment - mean_control with its fixed-horizon interval
    (Newcombe or Welch); `relative_uplift` = mean_treatment / mean_control - 1 with its
    delta-method interval (NaN when the control mean is 0); `statistic`/`p_value` of the
    z-test (rates) or Welch t-test (means), then Holm and BH adjusted across treatments;
    `sequential_*`: the always-valid mSPRT p-value (raw and Holm-adjusted) and interval.
    """

    name: str
    difference: float
    difference_lower: float
    difference_upper: float
    relative_uplift: float
    uplift_lower: float
    uplift_upper: float
    statistic: float
    p_value: float
    p_holm: float
    p_bh: float
    sequential_p: float
    sequential_p_holm: float
    sequential_lower: float
    sequential_upper: float


@dataclass(frozen=True)
class Comparison:
    """The full comparison of K arms; `arms` has K entries, `contrasts` K - 1 (every
    treatment, in arm order). Intervals are two-sided at `confidence`, per comparison."""

    kind: MetricKind
    control: int
    confidence: float
    mixture_sd: float
    arms: tuple[ArmSummary, ...]
    contrasts: tuple[Contrast, ...]
    chi_square: ChiSquareResult | None
    srm: ChiSquareResult | None

    @property
    def control_name(self) -> str:
        return self.arms[self.control].name


def mixture_sd_for(data: ArmData, control: int, relative_effect: float) -> float:
    """The mSPRT mixture sd for these data: `relative_effect` of the control mean (see
    `sluice.core.sequential.default_mixture_sd`)."""
    mean, var = data.moments()
    pooled_sd = float(np.sqrt(np.sum(var * data.n) / max(float(data.n.sum()), 1.0)))
    return default_mixture_sd(float(mean[control]), pooled_sd, relative_effect)


def difference_bounds(
    data: ArmData, control: int, confidence: float, sequential: bool, mixture_sd: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Lower and upper bounds (K,) of each arm's difference from control (0 at control):
    the always-valid mSPRT interval if `sequential`, else the fixed-horizon one."""
    c = check_control(control, data.k)
    check_probability("confidence", confidence)
    mean, var = data.moments()
    lo, hi = np.zeros(data.k), np.zeros(data.k)
    for k in range(data.k):
        if k == c:
            continue
        if sequential:
            r = msprt(data.n[c], mean[c], var[c], data.n[k], mean[k], var[k], mixture_sd, confidence)
        elif data.successes is not None:
            r = newcombe_interval(data.successes[c], data.n[c], data.successes[k], data.n[k], confidence)
        else:
            sm, ss = data.sums_and_squares()
            r = welch_interval(data.n[c], sm[c], ss[c], data.n[k], sm[k], ss[k], confidence)
        lo[k], hi[k] = float(r.lower), float(r.upper)
    return lo, hi


def compare(
    data: ArmData,
    control: int = 0,
    confidence: float = 0.95,
    expected_serves: ArrayLike | None = None,
    mixture_sd: float | None = None,
) -> Comparison:
    """Compare K arms against `control` (an arm index).

    `expected_serves` (K,), counts or shares, enables the SRM test of `data.n`.
    `mixture_sd` tunes the mSPRT; by default 3 % of the control mean. Every arm needs at
    least `data.min_events_for_comparison` events. For continuous rewards where some arm
    has no spread at all, P(best), P(beat control) and expected loss are NaN.
    """
    c = check_control(control, data.k)
    check_probability("confidence", confidence)
    if np.any(data.n < data.min_events_for_comparison):
        raise StatsInputError(
            f"n must be >= {data.min_events_for_comparison} in every arm to compare {data.kind} rewards, "
            f"but {data.n} is given"
        )
    tau = mixture_sd_for(data, c, 0.03) if mixture_sd is None else float(mixture_sd)
    mean, var = data.moments()
    treatments = [k for k in range(data.k) if k != c]

    if data.successes is not None:
        s = data.successes
        per_arm = wilson_interval(s, data.n, confidence)
        bayes: BayesianComparison = bayesian_binary(s, data.n, control=c)
        test = two_proportion_ztest(s[c], data.n[c], s[treatments], data.n[treatments])
        diff = newcombe_interval(s[c], data.n[c], s[treatments], data.n[treatments], confidence)
        chi = chi_square_test(s, data.n)
    else:
        sm, ss = data.sums_and_squares()
        per_arm = mean_interval(data.n, sm, ss, confidence)
        if np.all(var > 0):
            bayes = bayesian_continuous(data.n, sm, ss, control=c)
        else:
            # An arm whose rewards are all equal (say, no revenue yet) has no Student-t
            # posterior; its Bayesian summaries are unknown rather than made up.
            unknown = np.full(data.k, np.nan)
            bayes = BayesianComparison(unknown, unknown, unknown, c)
        test = welch_ttest(data.n[c], sm[c], ss[c], data.n[treatments], sm[treatments], ss[treatments])
        diff = welch_interval(data.n[c], sm[c], ss[c], data.n[treatments], sm[treatments], ss[treatments], confidence)
        chi = None
    seq = msprt(data.n[c], mean[c], var[c], data.n[treatments], mean[treatments], var[treatments], tau, confidence)
    if mean[c] != 0:
        uplift = relative_uplift_interval(
            data.n[c], mean[c], var[c], data.n[treatments], mean[treatments], var[treatments], confidence
        )
        up, up_lo, up_hi = (np.atleast_1d(x) for x in (uplift.estimate, uplift.lower, uplift.upper))
    else:
        up = up_lo = up_hi = np.full(len(treatments), np.nan)

    p = np.atleast_1d(test.p_value)
    seq_p = np.atleast_1d(seq.p_value)
    p_holm, p_bh, seq_holm = holm_adjust(p), benjamini_hochberg_adjust(p), holm_adjust(seq_p)
    lower, upper = np.atleast_1d(per_arm.lower), np.atleast_1d(per_arm.upper)
    arms = tuple(
        ArmSummary(
            name=data.names[k],
            n=float(data.n[k]),
            mean=float(mean[k]),
            lower=float(lower[k]),
            upper=float(upper[k]),
            p_best=float(bayes.p_best[k]),
            p_beat_control=float(bayes.p_beat_control[k]),
            expected_loss=float(bayes.expected_loss[k]),
        )
        for k in range(data.k)
    )
    cols = {
        "difference": diff.estimate,
        "difference_lower": diff.lower,
        "difference_upper": diff.upper,
        "statistic": test.statistic,
        "sequential_lower": seq.lower,
        "sequential_upper": seq.upper,
    }
    flat = {key: np.atleast_1d(v) for key, v in cols.items()}
    contrasts = tuple(
        Contrast(
            name=data.names[k],
            difference=float(flat["difference"][i]),
            difference_lower=float(flat["difference_lower"][i]),
            difference_upper=float(flat["difference_upper"][i]),
            relative_uplift=float(up[i]),
            uplift_lower=float(up_lo[i]),
            uplift_upper=float(up_hi[i]),
            statistic=float(flat["statistic"][i]),
            p_value=float(p[i]),
            p_holm=float(p_holm[i]),
            p_bh=float(p_bh[i]),
            sequential_p=float(seq_p[i]),
            sequential_p_holm=float(seq_holm[i]),
            sequential_lower=float(flat["sequential_lower"][i]),
            sequential_upper=float(flat["sequential_upper"][i]),
        )
        for i, k in enumerate(treatments)
    )
    srm = None if expected_serves is None else srm_test(data.n, expected_serves)
    return Comparison(
        kind=data.kind,
        control=c,
        confidence=float(confidence),
        mixture_sd=tau,
        arms=arms,
        contrasts=contrasts,
        chi_square=chi,
        srm=srm,
    )
