"""Health guardrails as always-valid sequential tests: e-detectors over hourly counters.

A health guardrail asks, continuously, whether an arm has crossed a threshold: an error
rate above 1 %, a 95th-percentile latency above 120 ms, a reward 5 % below its reference,
serves that do not follow the weights in force (SRM). Checking a fixed-horizon test at every
publication would raise false alarms far more often than its α; these tests do not.

**E-processes.** For one start time s, E_s is a nonnegative process that starts at 1 and
is a supermartingale while the arm is healthy: a mixture of likelihood ratios of "broken"
against "healthy at the threshold" over the observations made since s. By Ville's
inequality it ever reaches 1/α with probability at most α.

**E-detector.** A failure may start at any time, and evidence gathered while an arm was
healthy should not slow its detection. So every hour is a start: the detector is

    M = Σ_j π_j · E_{s_j}    with  π_j = 1 / (24 (d + 1)(d + 2)) for hour j of day d,  Σ_j π_j = 1,

where j counts hours from the (experiment, entity)'s origin and a start not reached yet
counts as E = 1. M is itself a supermartingale starting at 1, so `M ≥ 1/α` happens with
probability at most α over the experiment's whole life, however often it is looked at; a
failure that starts on day d is found once its own E reaches 1/(α·π_j), a cost of about
log 24 + 2·log(d + 2) nats (6 on day 3, 9 on day 14). Starts older than the window are dropped (their terms only lower M, which
keeps the bound). Events are counted in the hour of their *serve*, as the reward
statistics are, so late events merely join the hours they belong to.

The functions take per-hour arrays (hours ascending, one entry per hour from the first
start considered to the newest hour) and return log M. Nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.special import logsumexp
from scipy.stats import norm

from sluice.core.errors import CoreInputError

Action = Literal["alert", "rollback", "pause"]

# The reward name under which a service reports how a served request went (its latency,
# whether it failed) rather than a reward: `SluiceClient.log_outcome`.
REQUEST_OUTCOME = "sluice.request"

# Alternatives of the Bernoulli test, as log-odds steps above the threshold: from barely
# above it (slow drift) to far above (a model that fails one request in five).
_LOG_ODDS_STEPS = np.array([0.1, 0.2, 0.4, 0.8, 1.6, 3.2])
# Mixture sds of the mean-drop test, in units of the drop worth finding.
_TAU_SCALES = np.array([1.0, 3.0, 10.0])


class HealthInputError(CoreInputError):
    """Counters or thresholds a health test cannot work with."""


class _Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = Field(0.01, gt=0, lt=1, description="false-alarm probability for an entity (any of its arms) "
                                                        "over the experiment's whole life")
    action: Action = Field("alert", description="alert; rollback = the arm's weight to 0 for that entity; "
                                                "pause = the entity serves the default arm")


class RateRule(_Rule):
    threshold: float = Field(gt=0, lt=1, description="largest healthy rate")


class LatencyRule(_Rule):
    threshold: float = Field(120.0, gt=0, description="milliseconds the quantile may not exceed")
    quantile: float = Field(0.95, gt=0, lt=1, description="which latency quantile (0.95: p95)")


class DropRule(_Rule):
    threshold: float = Field(0.05, gt=0, lt=1, description="relative drop of the reward that breaches (0.05 = 5 %)")


class SrmRule(_Rule):
    alpha: float = Field(0.001, gt=0, lt=1, description="false-alarm probability over the experiment's whole life")
    action: Literal["alert", "pause"] = "alert"


class ConcentrationRule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.5, gt=0, le=1, description="largest share of traffic one arm may hold before a verdict")
    action: Literal["alert", "pause"] = "alert"


class QuietRule(_Rule):
    alpha: float = Field(0.001, gt=0, lt=1, description="how unlikely silence must be before it is called broken")
    threshold: float = Field(6.0, gt=0, description="hours of serves without a reward that may be chance")


class Reinstatement(BaseModel):
    """An arm given back its traffic after a rollback or kill (`sluice experiments reinstate`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arm: str
    entity: str | None = Field(None, description="None: every entity")
    at_ms: int = Field(ge=0, description="when; actions taken before it are lifted, evidence restarts after it")


class Retirement(BaseModel):
    """An arm taken out of traffic by hand (the control API's retire): held at 0 for the
    entity, as a decision's kill would, until it is reinstated after `at_ms`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arm: str
    entity: str | None = Field(None, description="None: every entity")
    at_ms: int = Field(ge=0, description="when; a reinstatement after it gives the arm back")


class HealthConfig(BaseModel):
    """The health guardrails of an experiment, each a threshold, an α and an action, tested
    per (entity, arm) by the e-detectors of this module. `None` turns one off. Defaults follow
    the reference platform (error rate 1 %, latency p95 120 ms, reward drop 5 %), with the
    action `alert`: rolling back is a choice the spec makes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    error_rate: RateRule | None = Field(default_factory=lambda: RateRule(threshold=0.01))
    latency: LatencyRule | None = Field(default_factory=LatencyRule)
    reward_drop: DropRule | None = Field(default_factory=DropRule)
    srm: SrmRule | None = Field(default_factory=SrmRule)
    concentration: ConcentrationRule | None = None
    quiet: QuietRule | None = Field(default_factory=QuietRule)
    reinstated: tuple[Reinstatement, ...] = ()
    retired: tuple[Retirement, ...] = ()

    @model_validator(mode="after")
    def _sensible(self) -> HealthConfig:
        if self.latency is not None and self.latency.quantile < 0.5:
            raise ValueError(f"latency.quantile {self.latency.quantile} watches the fast requests; use 0.5 or above")
        return self

    def reinstated_at(self, arm: str, entity: str) -> int:
        """The latest time `arm` was reinstated for `entity` (0: never)."""
        return max((r.at_ms for r in self.reinstated if r.arm == arm and r.entity in (None, entity)), default=0)

    def retired_at(self, arm: str, entity: str) -> int:
        """The latest time `arm` was retired by hand for `entity` (0: never)."""
        return max((r.at_ms for r in self.retired if r.arm == arm and r.entity in (None, entity)), default=0)

    def is_retired(self, arm: str, entity: str) -> bool:
        """Whether a retirement of `arm` for `entity` is in force (no reinstatement since)."""
        return self.retired_at(arm, entity) > self.reinstated_at(arm, entity)


@dataclass(frozen=True)
class Detection:
    """One look of an e-detector: log M and whether it crossed 1/α. `p_value` = min(1, 1/M)
    is an always-valid p-value."""

    log_e: float
    alpha: float
    strongest: int = -1  # index (among the starts passed) of the start with the most evidence

    @property
    def breached(self) -> bool:
        return self.log_e >= -np.log(self.alpha)

    @property
    def e_value(self) -> float:
        return float(np.exp(min(self.log_e, 700.0)))

    @property
    def p_value(self) -> float:
        return float(min(1.0, np.exp(-self.log_e)))


def start_log_weights(first_start: int, count: int) -> NDArray[np.float64]:
    """log π_j for starts j = first_start, …, first_start + count − 1 (hours from the origin):
    the 24 hours of day d share 1 / ((d + 1)(d + 2))."""
    if first_start < 0:
        raise HealthInputError(f"start hours count from the origin, but {first_start} is given")
    d = np.arange(first_start, first_start + count, dtype=np.int64) // 24
    return -np.log(d + 1.0) - np.log(d + 2.0) - np.log(24.0)


def e_detector(log_e_by_start: ArrayLike, first_start: int, alpha: float) -> Detection:
    """Combine e-processes started at consecutive hours `first_start`, … (hours from the
    origin; the last one is the newest hour) into the detector M, counting every start
    after the newest hour as 1."""
    log_e = np.asarray(log_e_by_start, dtype=np.float64)
    _check_alpha(alpha)
    if log_e.ndim != 1:
        raise HealthInputError(f"log e-values must be 1-D, got shape {log_e.shape}")
    newest = first_start + log_e.size - 1
    # Σ_{j > newest} π_j: the rest of the newest day, then every later day (Σ_{d > D} = 1/(D + 2)).
    day, rest = divmod(newest, 24)
    not_started = np.log((23 - rest) / (24 * (day + 1) * (day + 2)) + 1.0 / (day + 2))
    weighted = start_log_weights(first_start, log_e.size) + log_e
    terms = np.concatenate([weighted, [not_started]])
    return Detection(float(logsumexp(terms)), alpha, int(np.argmax(log_e)) if log_e.size else -1)


def _suffix_sums(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """For each start hour, the sum over it and every later hour."""
    return np.cumsum(values[::-1])[::-1]


def bernoulli_excess(trials: ArrayLike, events: ArrayLike, threshold: float, first_start: int,
                     alpha: float) -> Detection:
    """Is the rate of `events` among `trials` above `threshold`? (error rate; the share of
    requests slower than a latency threshold, for a quantile).

    trials, events: per hour, shape (H,). Under "rate ≤ threshold" the mixture, over
    alternatives above the threshold, of the likelihood ratios against the threshold is a
    supermartingale, so the detector is valid for every healthy rate, not only the boundary.
    """
    n = _counts(trials, "trials")
    k = _counts(events, "events")
    if n.shape != k.shape:
        raise HealthInputError(f"trials and events must have one shape, got {n.shape} and {k.shape}")
    if np.any(k > n):
        raise HealthInputError("events cannot outnumber trials in an hour")
    if not 0.0 < threshold < 1.0:
        raise HealthInputError(f"a rate threshold must be in (0, 1), but {threshold!r} is given")
    n_s, k_s = _suffix_sums(n), _suffix_sums(k)
    logit0 = np.log(threshold / (1 - threshold))
    p1 = 1.0 / (1.0 + np.exp(-(logit0 + _LOG_ODDS_STEPS)))  # (M,)
    up, down = np.log(p1 / threshold), np.log((1 - p1) / (1 - threshold))
    log_lr = k_s[:, None] * up[None, :] + (n_s - k_s)[:, None] * down[None, :]  # (H, M)
    log_e = logsumexp(log_lr, axis=1) - np.log(p1.size)
    return e_detector(log_e, first_start, alpha)


def mean_drop(n_arm: ArrayLike, sum_arm: ArrayLike, sumsq_arm: ArrayLike, n_ref: ArrayLike, sum_ref: ArrayLike,
              sumsq_ref: ArrayLike, drop: float, first_start: int, alpha: float, *,
              min_observations: int = 200) -> Detection:
    """Has the arm's mean fallen more than `drop` (relative) below the reference's?

    Per start s the arm's observations in hours ≥ s are compared with the reference's
    (a control arm in the same hours, or the arm's own earlier hours: the caller chooses and
    passes them per start, shape (H,) each). The statistic is θ̂ = m_arm − (1 − drop)·m_ref
    with variance V = v_arm/n_arm + (1 − drop)²·v_ref/n_ref; "healthy" is θ ≥ 0. E_s is the
    mixture likelihood ratio of θ̂ over *negative* θ (a half-normal mixture, sd τ) against
    θ = 0, in closed form 2·Λ·Φ(−θ̂τ/√(V(V + τ²))) where Λ is the two-sided mSPRT ratio
    (Johari, Pekelis & Walsh 2017), averaged over τ = 1, 3 and 10 times the drop worth
    finding (drop·|m_ref|) so that a large drop is found as fast as a small one. A better
    arm gives no evidence. The normal model is an approximation: a start with fewer than
    `min_observations` on either side counts as 1.
    """
    arrays = [_counts(x, name) for x, name in ((n_arm, "n_arm"), (n_ref, "n_ref"))]
    na, nr = arrays
    sa, qa, sr, qr = (np.asarray(x, dtype=np.float64) for x in (sum_arm, sumsq_arm, sum_ref, sumsq_ref))
    if not 0.0 < drop < 1.0:
        raise HealthInputError(f"a relative drop must be in (0, 1), but {drop!r} is given")
    log_e = np.zeros(na.size)
    ok = (na >= min_observations) & (nr >= min_observations)
    if ok.any():
        ma, mr = sa[ok] / na[ok], sr[ok] / nr[ok]
        va = np.maximum(qa[ok] / na[ok] - ma * ma, 1e-12) * na[ok] / np.maximum(na[ok] - 1, 1)
        vr = np.maximum(qr[ok] / nr[ok] - mr * mr, 1e-12) * nr[ok] / np.maximum(nr[ok] - 1, 1)
        theta = (ma - (1 - drop) * mr)[:, None]
        v = (va / na[ok] + (1 - drop) ** 2 * vr / nr[ok])[:, None]
        tau2 = np.maximum((drop * np.abs(mr)) ** 2, 1e-12)[:, None] * _TAU_SCALES[None, :] ** 2  # (H, 3)
        log_two_sided = 0.5 * np.log(v / (v + tau2)) + tau2 * theta * theta / (2 * v * (v + tau2))
        log_lr = np.log(2.0) + log_two_sided + norm.logcdf(-theta * np.sqrt(tau2) / np.sqrt(v * (v + tau2)))
        log_e[ok] = logsumexp(log_lr, axis=1) - np.log(_TAU_SCALES.size)
    return e_detector(log_e, first_start, alpha)


def srm_increment(observed: ArrayLike, expected_by_version: ArrayLike, versions_count: ArrayLike,
                  ratio: ArrayLike) -> float:
    """The log-factor a batch of in-experiment serves contributes to the SRM e-process.

    Under "serves follow the weights in force", serve i took arm a with probability
    w_{v_i}(a), the weights of the table version it logged. The alternative is the plug-in
    q_i(a) ∝ w_{v_i}(a)·r_a, with r the ratio of observed to expected serves estimated from
    *earlier* batches (predictable), so Π q_i(a_i)/w_{v_i}(a_i) is a martingale under the
    null. Grouped by version:

        Σ_a observed_a·log r_a − Σ_v n_v·log(w_v · r)

    observed: serves per arm in the batch, (K,); expected_by_version: the weights w_v of
    each version served, (V, K); versions_count: serves per version, (V,); ratio: r, (K,) > 0.
    """
    o = np.asarray(observed, dtype=np.float64)
    w = np.asarray(expected_by_version, dtype=np.float64)
    n_v = np.asarray(versions_count, dtype=np.float64)
    r = np.asarray(ratio, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != o.size or n_v.shape != (w.shape[0],) or r.shape != o.shape:
        raise HealthInputError(f"shapes do not agree: observed {o.shape}, weights {w.shape}, "
                               f"versions {n_v.shape}, ratio {r.shape}")
    if np.any(r <= 0):
        raise HealthInputError("ratios must be > 0")
    return float(o @ np.log(r) - n_v @ np.log(w @ r))


def srm_ratio(observed: ArrayLike, expected: ArrayLike, prior: float = 200.0) -> NDArray[np.float64]:
    """The plug-in ratio r = (observed + prior) / (expected + prior) per arm: near 1 until
    there is enough data to say otherwise (`prior` pseudo-serves at ratio 1)."""
    o = np.asarray(observed, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    return (o + prior) / (e + prior)


def no_rewards_probability(serves: float, reference_rate: float) -> float:
    """Probability of no reward at all in `serves` serves if the arm earned half the
    reference rate: small values say the arm's rewards went quiet, not that it is unlucky."""
    if serves < 0 or not 0.0 <= reference_rate <= 1.0:
        raise HealthInputError(f"serves must be >= 0 and the rate in [0, 1], got {serves} and {reference_rate}")
    return float(np.exp(serves * np.log1p(-reference_rate / 2))) if reference_rate < 1 else 0.0


def _counts(values: ArrayLike, name: str) -> NDArray[np.float64]:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise HealthInputError(f"{name} must be per hour, 1-D, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise HealthInputError(f"{name} must be finite and >= 0")
    return a


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise HealthInputError(f"alpha must be in (0, 1), but {alpha!r} is given")
