"""Decisions: ship / iterate / kill / continue for an experiment, increase / decrease /
stop / keep for each arm, from per-arm counts and the experiment's `DecisionCriteria`.

`DecisionCriteria` is part of every experiment spec (its `criteria` field); `decide`
applies it and says which rule fired, with the numbers, in one sentence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sluice.core.stats.checks import StatsInputError
from sluice.core.stats.bayes import check_control
from sluice.core.stats.comparison import ArmData, Comparison, compare, difference_bounds, mixture_sd_for
from sluice.core.stats.significance import ChiSquareResult, srm_test


class DecisionCriteria(BaseModel):
    """When an experiment may be judged, and what counts as a win.

    Times are in days (floats allowed), counts in events (serves with an outcome), uplift
    is relative to control (0.03 = +3 %), probabilities are in (0, 1).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_window_days: float = Field(7.0, gt=0, description="days of data the window must hold before any verdict")
    min_events_per_arm: int = Field(1000, ge=1, description="events every arm needs before any verdict")
    min_uplift: float = Field(
        0.03, ge=0, description="smallest relative uplift over control worth shipping (0.03 = +3 %)"
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="1 - alpha of the tests and intervals")
    max_duration_days: float = Field(14.0, gt=0, description="days after which an inconclusive experiment stops")
    sequential: bool = Field(
        True,
        description="judge with always-valid (mSPRT) p-values and intervals, safe under continuous "
        "monitoring; False uses fixed-horizon tests, valid only if looked at once",
    )
    srm_alpha: float = Field(
        0.001, gt=0, lt=1, description="p-value below which the serve counts are a sample ratio mismatch"
    )
    stop_p_best: float = Field(
        0.01, ge=0, lt=1, description="an arm whose probability of being best falls below this is stopped"
    )
    weight_tolerance: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="an arm's weight is moved only if its P(best) differs from its weight by more than this",
    )

    @model_validator(mode="after")
    def _duration_covers_window(self) -> DecisionCriteria:
        if self.max_duration_days < self.min_window_days:
            raise ValueError(
                f"max_duration_days must be >= min_window_days ({self.min_window_days}), "
                f"but {self.max_duration_days} is given"
            )
        return self

    @property
    def alpha(self) -> float:
        """The significance level, 1 - confidence (rounded so 0.95 gives 0.05, not 0.0500…04)."""
        return round(1.0 - self.confidence, 12)


class Verdict(StrEnum):
    """What to do with the experiment."""

    SHIP = "ship"  # a treatment won: give it all traffic
    ITERATE = "iterate"  # no trustworthy verdict in time (or broken data): rework and rerun
    KILL = "kill"  # no treatment can reach the minimum uplift: back to control
    CONTINUE = "continue"  # keep collecting data


class ArmAction(StrEnum):
    """What to do with one arm's weight."""

    INCREASE = "increase"
    DECREASE = "decrease"
    STOP = "stop"  # weight to 0
    KEEP = "keep"  # leave the weight as it is


class Rule(StrEnum):
    """The rule that produced a verdict, in the order `decide` tries them."""

    SAMPLE_RATIO_MISMATCH = "sample_ratio_mismatch"
    OUT_OF_TIME_BEFORE_MINIMUM_DATA = "out_of_time_before_minimum_data"
    MINIMUM_DATA = "minimum_data"
    WINNER = "winner"
    POSTERIOR_WINNER = "posterior_winner"
    POSTERIOR_CONTROL = "posterior_control"
    FUTILE = "futile"
    OUT_OF_TIME = "out_of_time"
    COLLECTING = "collecting"


@dataclass(frozen=True)
class ArmDecision:
    """One arm's action with its reason; `p_best` (NaN before the arms can be compared) and
    `weight` (the current weight, or 1/K if none was given) are the numbers the weight rule
    compares."""

    name: str
    action: ArmAction
    reason: str
    p_best: float
    weight: float


@dataclass(frozen=True)
class Decision:
    """The verdict on an experiment, the rule that fired and the sentence explaining it.

    `winner` is the shipped arm's name (only for SHIP). `numbers` holds the figures the rule
    looked at (names → values). `comparison` is the full statistics (None when the arms
    had too few events to compare), `srm` the sample-ratio test (None if no expected serves
    were given).
    """

    verdict: Verdict
    rule: Rule
    reason: str
    winner: str | None
    arms: tuple[ArmDecision, ...]
    numbers: dict[str, float]
    comparison: Comparison | None
    srm: ChiSquareResult | None
    criteria: DecisionCriteria


def _check_days(name: str, value: float) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise StatsInputError(f"{name} must be a number of days >= 0, but {value!r} is given") from None
    if not (math.isfinite(x) and x >= 0):
        raise StatsInputError(f"{name} must be a number of days >= 0, but {value!r} is given")
    return x


def _check_weights(current_weights: ArrayLike | None, k: int) -> NDArray[np.float64]:
    if current_weights is None:
        return np.full(k, 1.0 / k)
    w = np.asarray(current_weights, dtype=np.float64) if np.ndim(current_weights) == 1 else None
    if w is None or w.size != k or not np.all(np.isfinite(w)) or np.any(w < 0) or abs(w.sum() - 1.0) > 1e-6:
        raise StatsInputError(
            f"current_weights must be {k} probabilities (one per arm) summing to 1, but {current_weights!r} is given"
        )
    return w


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:+.2%}"


def _relative(diff: float, control_mean: float) -> float:
    if control_mean != 0:
        return diff / abs(control_mean)
    return math.inf if diff > 0 else (-math.inf if diff < 0 else 0.0)


@dataclass(frozen=True)
class _Case:
    """What every rule reads: the inputs, checked, and the statistics computed once."""

    data: ArmData
    criteria: DecisionCriteria
    control: int
    days_in_window: float
    days_running: float
    weights: NDArray[np.float64]  # (K,) current, or equal
    p_best: NDArray[np.float64]  # (K,), NaN when the arms cannot be compared yet
    comparison: Comparison | None
    srm: ChiSquareResult | None
    mixture_sd: float
    adaptive: bool = False  # weights follow the posteriors (a bandit): judge by P(best) and expected loss
    floor: float = 0.0  # least weight of every arm under the adaptive allocation

    @property
    def names(self) -> tuple[str, ...]:
        return self.data.names

    @property
    def treatments(self) -> list[int]:
        return [k for k in range(self.data.k) if k != self.control]

    @property
    def test_name(self) -> str:
        if self.criteria.sequential:
            return "always-valid mSPRT"
        return "z-test" if self.data.kind == "binary" else "Welch t-test"

    def arm(self, k: int, action: ArmAction, why: str) -> ArmDecision:
        return ArmDecision(self.names[k], action, why, float(self.p_best[k]), float(self.weights[k]))

    def all_arms(self, action: ArmAction, why: str) -> tuple[ArmDecision, ...]:
        return tuple(self.arm(k, action, why) for k in range(self.data.k))

    def only(self, keeper: int, why_keep: str, why_stop: str) -> tuple[ArmDecision, ...]:
        """`keeper` takes all traffic, every other arm stops."""
        return tuple(
            self.arm(k, ArmAction.INCREASE, why_keep) if k == keeper else self.arm(k, ArmAction.STOP, why_stop)
            for k in range(self.data.k)
        )

    def decision(
        self, verdict: Verdict, rule: Rule, reason: str, arms: tuple[ArmDecision, ...],
        numbers: dict[str, float] | None = None, winner: str | None = None,
    ) -> Decision:
        base = {
            "days_in_window": self.days_in_window,
            "days_running": self.days_running,
            "min_events": float(self.data.n.min()),
            "alpha": self.criteria.alpha,
        }
        if self.srm is not None:
            base["srm_p_value"] = float(self.srm.p_value)
        return Decision(
            verdict, rule, reason, winner, arms, base | (numbers or {}), self.comparison, self.srm, self.criteria
        )


@dataclass(frozen=True)
class _Effects:
    """Each treatment's uplift, adjusted p-value and simultaneous upper bound, keyed by arm
    index; `futile` are the treatments whose upper bound is below the minimum uplift."""

    uplift: dict[int, float]
    p_adjusted: dict[int, float]
    upper_uplift: dict[int, float]
    futile: frozenset[int]
    level: float  # confidence of the simultaneous upper bounds


def _effects(case: _Case, comparison: Comparison) -> _Effects:
    mean, _ = case.data.moments()
    control_mean = float(mean[case.control])
    seq = case.criteria.sequential
    by_arm = dict(zip(case.treatments, comparison.contrasts, strict=True))
    # Bonferroni over the K-1 treatments so that all upper bounds hold together.
    level = 1.0 - case.criteria.alpha / len(case.treatments)
    _, upper = difference_bounds(case.data, case.control, level, seq, case.mixture_sd)
    threshold = case.criteria.min_uplift * abs(control_mean)
    return _Effects(
        uplift={k: _relative(ct.difference, control_mean) for k, ct in by_arm.items()},
        p_adjusted={k: ct.sequential_p_holm if seq else ct.p_holm for k, ct in by_arm.items()},
        upper_uplift={k: _relative(float(upper[k]), control_mean) for k in case.treatments},
        futile=frozenset(k for k in case.treatments if upper[k] < threshold),
        level=level,
    )


def _sample_ratio_rule(case: _Case) -> Decision | None:
    if case.srm is None or case.srm.p_value >= case.criteria.srm_alpha:
        return None
    names, n = case.names, case.data.n
    expected = ", ".join(f"{names[k]} {case.srm.expected[k]:.0f}" for k in range(case.data.k))
    observed = ", ".join(f"{names[k]} {n[k]:.0f}" for k in range(case.data.k))
    return case.decision(
        Verdict.ITERATE,
        Rule.SAMPLE_RATIO_MISMATCH,
        f"Sample ratio mismatch: served {observed} where the weights expect {expected} "
        f"(chi-square p = {case.srm.p_value:.2g} < {case.criteria.srm_alpha:g}); assignment or logging is "
        "broken, so no comparison can be trusted: fix it and restart.",
        case.all_arms(ArmAction.KEEP, "weights frozen until the sample ratio mismatch is fixed"),
    )


def _minimum_events(case: _Case) -> NDArray[np.float64]:
    """Events each arm needs before any verdict. A fixed split needs `min_events_per_arm`
    everywhere. An adaptive one starves the losers by design, so there the arm with the most
    events needs `min_events_per_arm` and every other arm that minimum scaled to what the
    exploration floor gives it (K × floor of an equal share): arms held at the floor still
    reach it, and then P(best) and the expected loss say the rest."""
    crit = case.criteria
    least = max(crit.min_events_per_arm, case.data.min_events_for_comparison)
    need = np.full(case.data.k, float(least))
    if case.adaptive:
        scaled = max(case.data.min_events_for_comparison, math.ceil(least * min(1.0, case.data.k * case.floor)))
        need[:] = scaled
        need[int(np.argmax(case.data.n))] = least
    return need


def _minimum_data_rule(case: _Case) -> Decision | None:
    crit = case.criteria
    need = _minimum_events(case)
    short = [k for k in range(case.data.k) if case.data.n[k] < need[k]]
    missing = []
    if case.days_in_window < crit.min_window_days:
        missing.append(f"{case.days_in_window:g} of {crit.min_window_days:g} days in the window")
    if short and len(set(need.tolist())) == 1:
        missing.append(f"fewer than {need[0]:.0f} events in {', '.join(case.names[k] for k in short)}")
    elif short:
        missing.append("too few events in " + ", ".join(f"{case.names[k]} ({case.data.n[k]:.0f} of {need[k]:.0f})"
                                                      for k in short))
    if not missing:
        return None
    if case.days_running >= crit.max_duration_days:
        return case.decision(
            Verdict.ITERATE,
            Rule.OUT_OF_TIME_BEFORE_MINIMUM_DATA,
            f"Iterate: {case.days_running:g} days reached the maximum of {crit.max_duration_days:g} before the "
            f"minimum data ({'; '.join(missing)}); the experiment needs more traffic or fewer arms.",
            case.only(case.control, "back to control: no verdict was possible", "stopped: no verdict was possible in time"),
        )
    return case.decision(
        Verdict.CONTINUE,
        Rule.MINIMUM_DATA,
        f"Continue: minimum data not reached ({'; '.join(missing)}); early differences are noise.",
        case.all_arms(ArmAction.KEEP, "minimum data not reached"),
    )


def _posterior_rule(case: _Case) -> Decision | None:
    """For adaptive allocation: the leader by P(best) is chosen once P(best) ≥ confidence and
    its expected loss (what choosing it costs, per event, if another arm is in fact best) is
    below the smallest uplift worth having. Ship it, or kill the candidates if it is control."""
    if not case.adaptive or case.comparison is None:
        return None
    crit = case.criteria
    leader = int(np.nanargmax(case.p_best))
    arm = case.comparison.arms[leader]
    mean, _ = case.data.moments()
    tolerable = crit.min_uplift * abs(float(mean[leader]))
    if case.p_best[leader] < crit.confidence or arm.expected_loss > tolerable:
        return None
    name = case.names[leader]
    why = (f"P(best) {case.p_best[leader]:.4f} >= {crit.confidence:g} and its expected loss {arm.expected_loss:.3g} "
           f"<= {_pct(crit.min_uplift)} of its mean ({tolerable:.3g})")
    numbers = {"p_best": float(case.p_best[leader]), "expected_loss": float(arm.expected_loss)}
    if leader == case.control:
        return case.decision(
            Verdict.KILL, Rule.POSTERIOR_CONTROL, f"Kill: the control {name} is best: {why}; no candidate beats it.",
            case.only(leader, "back to control: it is best", f"stopped: {name} is best"), numbers)
    return case.decision(
        Verdict.SHIP, Rule.POSTERIOR_WINNER, f"Ship {name}: {why}.",
        case.only(leader, "the winner takes the traffic", f"stopped: {name} is best"), numbers, winner=name)


def _winner_rule(case: _Case, fx: _Effects) -> Decision | None:
    crit = case.criteria
    winners = [
        k for k in case.treatments
        if fx.p_adjusted[k] <= crit.alpha and fx.uplift[k] > 0 and fx.uplift[k] >= crit.min_uplift
    ]
    if not winners:
        return None
    w = max(winners, key=lambda k: (fx.uplift[k], case.p_best[k]))
    mean, _ = case.data.moments()
    c = case.control
    return case.decision(
        Verdict.SHIP,
        Rule.WINNER,
        f"Ship {case.names[w]}: {_pct(fx.uplift[w])} relative uplift over {case.names[c]} "
        f"({mean[w]:.4g} vs {mean[c]:.4g}), Holm-adjusted {case.test_name} p = {fx.p_adjusted[w]:.3g} <= "
        f"alpha {crit.alpha:g}, at least the minimum uplift {_pct(crit.min_uplift)}.",
        case.only(w, "the winner takes all traffic", f"stopped: {case.names[w]} won"),
        {"uplift": fx.uplift[w], "p_value": fx.p_adjusted[w], "p_best": float(case.p_best[w])},
        winner=case.names[w],
    )


def _futility_rule(case: _Case, fx: _Effects) -> Decision | None:
    if len(fx.futile) < len(case.treatments):
        return None
    best = max(case.treatments, key=lambda k: fx.upper_uplift[k])
    min_uplift = case.criteria.min_uplift
    return case.decision(
        Verdict.KILL,
        Rule.FUTILE,
        f"Kill: no treatment can reach the minimum uplift {_pct(min_uplift)}: the most any could be is "
        f"{_pct(fx.upper_uplift[best])} ({case.names[best]}, upper bound at {fx.level:.1%} confidence).",
        case.only(case.control, "back to control: no treatment can reach the minimum uplift",
                  "stopped: cannot reach the minimum uplift"),
        {"best_upper_uplift": fx.upper_uplift[best], "min_uplift": min_uplift},
    )


def _leader_sentence(case: _Case, fx: _Effects, leader: int) -> str:
    crit = case.criteria
    return (
        f"the best treatment, {case.names[leader]}, is at {_pct(fx.uplift[leader])} with Holm-adjusted "
        f"{case.test_name} p = {fx.p_adjusted[leader]:.3g} (needs <= {crit.alpha:g} and an uplift of at least "
        f"{_pct(crit.min_uplift)})"
    )


def _out_of_time_rule(case: _Case, fx: _Effects, leader: int) -> Decision | None:
    crit = case.criteria
    if case.days_running < crit.max_duration_days:
        return None
    return case.decision(
        Verdict.ITERATE,
        Rule.OUT_OF_TIME,
        f"Iterate: {case.days_running:g} days reached the maximum of {crit.max_duration_days:g} without a "
        f"verdict; {_leader_sentence(case, fx, leader)}.",
        case.only(case.control, "back to control: no treatment proved itself in time", "stopped: not proven in time"),
        {"uplift": fx.uplift[leader], "p_value": fx.p_adjusted[leader], "p_best": float(case.p_best[leader])},
    )


def _collecting(case: _Case, fx: _Effects, leader: int) -> Decision:
    crit, tol = case.criteria, case.criteria.weight_tolerance
    arms = []
    for k in range(case.data.k):
        pb, wk = float(case.p_best[k]), float(case.weights[k])
        if k in fx.futile:
            arms.append(case.arm(k, ArmAction.STOP, f"cannot reach the minimum uplift (at most {_pct(fx.upper_uplift[k])})"))
        elif k != case.control and pb < crit.stop_p_best:
            arms.append(case.arm(k, ArmAction.STOP, f"P(best) {pb:.3g} < {crit.stop_p_best:g}"))
        elif pb > wk + tol:
            arms.append(case.arm(k, ArmAction.INCREASE, f"P(best) {pb:.3g} > weight {wk:.3g} + {tol:g}"))
        elif pb < wk - tol:
            arms.append(case.arm(k, ArmAction.DECREASE, f"P(best) {pb:.3g} < weight {wk:.3g} - {tol:g}"))
        else:
            arms.append(case.arm(k, ArmAction.KEEP, f"P(best) {pb:.3g} within {tol:g} of weight {wk:.3g}"))
    return case.decision(
        Verdict.CONTINUE,
        Rule.COLLECTING,
        f"Continue: no verdict yet; {_leader_sentence(case, fx, leader)}.",
        tuple(arms),
        {"uplift": fx.uplift[leader], "p_value": fx.p_adjusted[leader], "p_best": float(case.p_best[leader])},
    )


def decide(
    data: ArmData,
    criteria: DecisionCriteria,
    *,
    days_in_window: float,
    days_running: float,
    control: int = 0,
    expected_serves: ArrayLike | None = None,
    current_weights: ArrayLike | None = None,
    adaptive: bool = False,
    floor: float = 0.0,
) -> Decision:
    """Turn per-arm counts and the experiment's criteria into a verdict and per-arm actions.

    `data` holds the window's per-arm events (`n` = serves whose reward window closed);
    `days_in_window` is how many days of data the window holds, `days_running` how long the
    experiment has run; `expected_serves` (K,), counts or shares, enables the SRM check
    (for bandits: `expected_serve_counts` of the weights in force); `current_weights` (K,)
    are the weights now in force (default: equal).

    Rules, tried in this order; the first that fires gives the verdict:

    1. sample_ratio_mismatch → ITERATE. The serve counts fail the SRM test
       (p < `srm_alpha`): assignment or logging is broken and every comparison is suspect.
       All arms KEEP: nothing moves on untrustworthy data.
    2. Minimum data not reached (`days_in_window` < `min_window_days`, or some arm has
       fewer than `min_events_per_arm` events; means need at least 3; with `adaptive`
       allocation (a bandit with exploration `floor`) only the arm with the most events needs
       the full minimum, the others it scaled by K × floor):
       out_of_time_before_minimum_data → ITERATE if `days_running` >= `max_duration_days`
       (the experiment needs more traffic or fewer arms; back to control), else
       minimum_data → CONTINUE with all arms KEEP (early numbers are noise).
    3. With `adaptive` allocation, posterior_winner → SHIP the leader (or posterior_control
       → KILL the candidates when the leader is control) once its P(best) ≥ confidence and
       its expected loss is at most `min_uplift` × its mean: adaptive allocation starves the
       losers, so tests against control may never conclude while the posterior does.
    3'. winner → SHIP. Some treatment is significantly better than control — Holm-adjusted
       p <= 1 - confidence, using the always-valid mSPRT p-value if `sequential`, else the
       fixed-horizon z / Welch test — and its relative uplift (difference / |control
       mean|) is at least `min_uplift`. Of several, the largest uplift ships. The winner
       INCREASEs to all traffic, every other arm STOPs.
    4. futile → KILL. Every treatment's upper bound on its difference from control (at
       confidence 1 - α/(K-1), Bonferroni, sequential or fixed as above) is below
       `min_uplift` × |control mean|: none can reach the minimum uplift. Control INCREASEs,
       treatments STOP.
    5. out_of_time → ITERATE. `days_running` >= `max_duration_days` with no verdict: back
       to control (control INCREASEs, treatments STOP) and rework the idea.
    6. collecting → CONTINUE, with per-arm weight advice. A treatment STOPs if its upper
       bound (as in 4) is below the minimum uplift or its P(best) < `stop_p_best`. Any
       other arm INCREASEs if P(best) exceeds its current weight by more than
       `weight_tolerance`, DECREASEs if it falls short by more, and KEEPs otherwise — P(best)
       is the weight Thompson sampling would give it, KEEP avoids churning weights on
       noise. The control is never stopped while the experiment runs: every comparison
       needs it. For a static A/B test these actions are advice; a bandit's policy moves
       the weights itself and the guardrails bound the steps.

    The mSPRT's mixture sd is `min_uplift` of the control mean (at least 1 %): the test is
    tuned to reach a verdict fastest for the smallest uplift worth shipping.
    """
    c = check_control(control, data.k)
    window, running = _check_days("days_in_window", days_in_window), _check_days("days_running", days_running)
    weights = _check_weights(current_weights, data.k)
    comparable = bool(np.all(data.n >= data.min_events_for_comparison))
    tau = mixture_sd_for(data, c, criteria.min_uplift)
    comparison = compare(data, c, criteria.confidence, expected_serves, tau) if comparable else None
    case = _Case(
        data=data,
        criteria=criteria,
        control=c,
        days_in_window=window,
        days_running=running,
        weights=weights,
        p_best=np.array([a.p_best for a in comparison.arms]) if comparison else np.full(data.k, np.nan),
        comparison=comparison,
        srm=None if expected_serves is None else srm_test(data.n, expected_serves),
        mixture_sd=tau,
        adaptive=adaptive,
        floor=floor,
    )
    early = _sample_ratio_rule(case) or _minimum_data_rule(case) or _posterior_rule(case)
    if early is not None:
        return early
    if comparison is None:  # unreachable: the minimum-data rule requires comparable arms
        raise StatsInputError(f"n must be >= {data.min_events_for_comparison} in every arm, but {data.n} is given")
    fx = _effects(case, comparison)
    verdict = _winner_rule(case, fx) or _futility_rule(case, fx)
    if verdict is not None:
        return verdict
    leader = max(case.treatments, key=lambda k: fx.uplift[k])
    return _out_of_time_rule(case, fx, leader) or _collecting(case, fx, leader)
