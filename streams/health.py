"""Health guardrails of one (experiment, entity): evaluate, act, lift.

At every publication the worker asks `evaluate` whether any arm breaches a guardrail of the
spec's `health` section (the e-detectors of `sluice.core.health` over the window's hourly
counters), records what `act` decides in the entity's state (a rollback pins the arm to 0,
a pause gives the default arm all traffic), `lift` undoes what `sluice experiments
reinstate` reinstated, and `retire` holds at 0 what an operator retired. The weight table
published in the same round carries the effect and says why (`pins` and `notes`), and each
step yields Alert records for the alerts topic.

A breach acts in the publication that finds it; an arm's evidence restarts after it is
reinstated, so an old failure does not trip it again.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sluice.core.health import (
    Detection,
    bernoulli_excess,
    e_detector,
    mean_drop,
    no_rewards_probability,
)
from sluice.core.spec import ExperimentSpec
from sluice.core.sufficient import HOUR_MS, ArmCounters
from streams.state import EntityState

C = ArmCounters
# A bandit arm's reward is compared with its own previous day. Starts whose day has begun to
# leave the window are dropped (a reference must not shrink under its e-process).
_REFERENCE_HOURS = 24
# The Alert's `kind` (a closed Avro enum that old readers know) of each guardrail; the
# `guardrail` field names it exactly.
_KIND = {"error_rate": "ERROR_RATE", "latency": "LATENCY", "reward_drop": "REWARD_DROP", "srm": "SRM",
         "concentration": "EXPLORATION_FLOOR", "quiet": "REWARD_DROP"}


@dataclass(frozen=True)
class Breach:
    """A guardrail an arm (or, for SRM and concentration, the entity) crossed."""

    kind: str  # a key of the spec's health section
    arm: str
    value: float  # what was observed: a rate, milliseconds, a relative drop, a ratio, a share
    threshold: float
    e_value: float  # the detector's M (∞ for the deterministic concentration check)
    alpha: float | None
    action: str  # alert | rollback | pause

    def sentence(self) -> str:
        what = {
            "error_rate": f"error rate {self.value:.2%} above {self.threshold:.2%}",
            "latency": f"latency quantile {self.value:.0f} ms above {self.threshold:.0f} ms",
            "reward_drop": f"reward {self.value:.1%} below its reference, more than {self.threshold:.0%}",
            "srm": f"served {self.value:.3f}× its expected share of traffic (sample ratio mismatch)",
            "concentration": f"holds {self.value:.0%} of traffic, above {self.threshold:.0%}",
            "quiet": f"no reward in {self.value:.0f} serves of the last {self.threshold:g} hours",
        }[self.kind]
        proof = "" if self.alpha is None else f" (e-value {self.e_value:.3g} ≥ 1/α = {1 / self.alpha:.3g})"
        return f"{self.arm}: {what}{proof}"


@dataclass(frozen=True)
class Evaluation:
    breaches: list[Breach]
    e_values: dict[tuple[str, str], float]  # (guardrail, arm or "*") → M, for the metrics
    srm_p_value: float | None


def _hours(state: EntityState, first: int, last: int, k: int) -> NDArray[np.float64]:
    """Counters per hour first..last (zeros where none), shape (H, FIELDS, K)."""
    out = np.zeros((max(0, last - first + 1), len(C.FIELDS), k))
    for hour, counters in state.hours.hours.items():
        if first <= hour <= last:
            out[hour - first, :, :counters.num_arms] = counters.values[:, :k]
    return out


def evaluate(state: EntityState, spec: ExperimentSpec, entity: str, weights: dict[str, float] | None = None) -> Evaluation:
    """Every guardrail of `spec.health` for every live arm of this entity, over the window."""
    health = spec.health
    k = len(state.arms)
    if state.origin_hour < 0 or not state.max_event_ms:
        return Evaluation([], {}, None)
    newest = state.max_event_ms // HOUR_MS
    window_first = max(state.hours.first_hour(state.max_event_ms, spec.window_ms), state.origin_hour)
    lookback = window_first
    counts = _hours(state, lookback, newest, k)
    breaches: list[Breach] = []
    e_values: dict[tuple[str, str], float] = {}
    live = [a for a in spec.arm_names if a in state.arms]
    per_arm = max(1, len(live))  # a guardrail's α is for the entity: each arm tests at α / K


    def first_start(arm: str) -> int:
        reinstated = health.reinstated_at(arm, entity)
        return max(window_first, (reinstated // HOUR_MS) + 1 if reinstated else 0)

    def hours_of(arm: str) -> tuple[int, NDArray[np.float64]]:
        start = first_start(arm)
        return start - state.origin_hour, counts[start - lookback:, :, state.arms.index(arm)]

    def add(kind: str, arm: str, detection: Detection, value: float, threshold: float, action: str, worse: bool) -> None:
        e_values[(kind, arm)] = detection.e_value
        if detection.breached and worse:
            breaches.append(Breach(kind, arm, value, threshold, detection.e_value, detection.alpha, action))

    for arm in live:
        j, h = hours_of(arm)
        if h.shape[0] == 0:
            continue
        # Observed values are reported over the hours since the start with the most evidence:
        # since the failure began, not diluted by the healthy days before it.
        if (rule := health.error_rate) is not None:
            d = bernoulli_excess(h[:, C.OUTCOMES], h[:, C.ERRORS], rule.threshold, j, rule.alpha / per_arm)
            since = h[max(d.strongest, 0):]
            rate = since[:, C.ERRORS].sum() / max(1.0, since[:, C.OUTCOMES].sum())
            add("error_rate", arm, d, rate, rule.threshold, rule.action, True)
        if (lat := health.latency) is not None:
            d = bernoulli_excess(h[:, C.LATENCY_N], h[:, C.SLOW], 1 - lat.quantile, j, lat.alpha / per_arm)
            since = h[max(d.strongest, 0):]
            observed = float(ArmCounters(since.sum(axis=0)[:, None]).latency_quantile(lat.quantile)[0])
            add("latency", arm, d, observed if math.isfinite(observed) else 0.0, lat.threshold, lat.action, True)
        if (drop := health.reward_drop) is not None:
            found = _reward_drop(state, spec, arm, counts, lookback, first_start(arm), j, drop.threshold,
                                 drop.alpha / per_arm)
            if found is not None:
                d, value = found
                add("reward_drop", arm, d, value, drop.threshold, drop.action, True)
        if (quiet := health.quiet) is not None:
            found_quiet = _quiet(state, arm, counts, lookback, newest, quiet.threshold, quiet.alpha / per_arm, live)
            if found_quiet is not None:
                breaches.append(Breach("quiet", arm, found_quiet, quiet.threshold, math.inf, None, quiet.action))

    srm_p = None
    if health.srm is not None and state.srm_log_e:
        start = max(state.srm_first_start, window_first)
        log_e = state.srm_log_e[start - state.srm_first_start:]
        if log_e:
            d = e_detector(log_e, start - state.origin_hour, health.srm.alpha)
            srm_p = d.p_value
            window = counts[window_first - lookback:].sum(axis=0)
            observed, expected = window[C.SRM_OBSERVED], window[C.SRM_EXPECTED]
            ratio = np.where(expected > 0, observed / np.maximum(expected, 1e-12), 1.0)
            worst = int(np.argmin(ratio))  # the arm that lost serves: the usual cause is logging lost on its path
            add("srm", state.arms[worst], d, float(ratio[worst]), 1.0, health.srm.action, True)
    if (conc := health.concentration) is not None and weights and state.shipped is None:
        arm, share = max(weights.items(), key=lambda kv: kv[1])
        if share > conc.threshold:
            breaches.append(Breach("concentration", arm, share, conc.threshold, math.inf, None, conc.action))
    return Evaluation(breaches, e_values, srm_p)


def _reward_drop(state: EntityState, spec: ExperimentSpec, arm: str, counts: NDArray[np.float64], lookback: int,
                 start: int, j: int, threshold: float, alpha: float) -> tuple[Detection, float] | None:
    """The reward-drop detector of one arm: against the control arm in the same hours (a
    static split) or against the arm's own previous day (a bandit: for the start at hour t,
    hours t − 24 … t − 1, counted only while all of them are in the window). Returns the
    detection and the relative drop at the start with the most evidence.

    Against its own past, only hours whose attribution window has closed count: the newest
    hours still wait for rewards and would look like a drop. Against control, both arms
    wait alike."""
    a = state.arms.index(arm)
    h = counts[start - lookback:]
    if spec.policy.name != "static":
        h = h.copy()
        h[max(0, h.shape[0] - math.ceil(spec.reward.attribution_window_hours)):] = 0.0
    n, s, q = h[:, C.COUNT, a], h[:, C.TOTAL, a], h[:, C.TOTAL_SQ, a]
    suffix = lambda x: np.cumsum(x[::-1])[::-1]  # noqa: E731 - per start: its hour and every later one
    na, sa, qa = suffix(n), suffix(s), suffix(q)
    if spec.policy.name == "static":
        if arm == spec.default_arm or spec.default_arm not in state.arms:
            return None
        c = state.arms.index(spec.default_arm)
        nr, sr, qr = (suffix(h[:, f, c]) for f in (C.COUNT, C.TOTAL, C.TOTAL_SQ))
    else:
        # For the start at hour t (index i from the window's first hour), the reference is
        # hours t − 24 … t − 1; a start whose reference reaches before the window counts as 1.
        full = counts[:, :, a].copy()
        full[max(0, full.shape[0] - math.ceil(spec.reward.attribution_window_hours)):] = 0.0
        cum = np.vstack([np.zeros((1, full.shape[1])), np.cumsum(full, axis=0)])
        idx = np.arange(start - lookback, counts.shape[0])
        before = cum[idx] - cum[np.maximum(idx - _REFERENCE_HOURS, 0)]
        before[idx < _REFERENCE_HOURS] = 0.0
        nr, sr, qr = before[:, C.COUNT], before[:, C.TOTAL], before[:, C.TOTAL_SQ]
    if na.size == 0:
        return None
    detection = mean_drop(na, sa, qa, nr, sr, qr, threshold, j, alpha)
    with np.errstate(invalid="ignore", divide="ignore"):
        drops = 1.0 - (sa / na) / (sr / nr)
    at = detection.strongest
    value = float(drops[at]) if 0 <= at < drops.size and np.isfinite(drops[at]) else 0.0
    return detection, value


def _quiet(state: EntityState, arm: str, counts: NDArray[np.float64], lookback: int, newest: int, hours: float,
           alpha: float, live: list[str]) -> float | None:
    """Serves of `arm` in the last `hours` hours when none earned a reward while the other
    arms did, and silence that unlikely; else None."""
    recent = counts[max(0, newest - int(hours) + 1 - lookback):]
    a = state.arms.index(arm)
    served, rewarded = recent[:, C.COUNT, a].sum(), recent[:, C.TOTAL, a].sum()
    others = [state.arms.index(x) for x in live if x != arm]
    ref_n = counts[:, C.COUNT, others].sum() if others else 0.0
    ref_rate = counts[:, C.TOTAL, others].sum() / ref_n if ref_n else 0.0
    if rewarded == 0 and served > 0 and 0 < ref_rate <= 1 and no_rewards_probability(served, ref_rate) < alpha:
        return float(served)
    return None


def act(state: EntityState, spec: ExperimentSpec, entity: str, evaluation: Evaluation, now_ms: int) -> list[dict[str, Any]]:
    """Record what the breaches call for, once per breach, and return their Alert records."""
    alerts = []
    for b in evaluation.breaches:
        key = f"{b.kind}/{b.arm}"
        if key in state.alerted:
            continue
        state.alerted[key] = now_ms
        why = {"kind": b.kind, "at_ms": now_ms, "value": float(b.value), "threshold": float(b.threshold),
               "e_value": float(min(b.e_value, 1e300))}
        if b.action == "rollback" and b.arm not in state.actions:
            state.actions[b.arm] = {**why, "action": "rollback"}
            done = f"rolled back {b.arm} for {entity!r} (weight 0 until reinstated)"
        elif b.action == "pause" and state.paused is None:
            state.paused = {**why, "arm": b.arm}
            done = f"paused {spec.id!r} for {entity!r}: it serves the default arm {spec.default_arm} until {b.arm} " \
                   f"is reinstated"
        else:
            done = "alerted only" if b.action == "alert" else "already in force"
        alerts.append(alert_record(spec, entity, b.arm, _KIND[b.kind], "CRITICAL" if b.action != "alert" else "WARNING",
                                   b.value, b.threshold, f"{b.sentence()}; {done}", state.version, now_ms,
                                   guardrail=b.kind, action=b.action))
    return alerts


def lift(state: EntityState, spec: ExperimentSpec, entity: str, now_ms: int) -> list[dict[str, Any]]:
    """Undo the rollbacks, kills and pause that `sluice experiments reinstate` lifted after
    they were taken; returns their Alert records (kind REINSTATED)."""
    alerts = []
    for arm, why in list(state.actions.items()):
        at = spec.health.reinstated_at(arm, entity)
        if at > why["at_ms"]:
            del state.actions[arm]
            alerts.append(_reinstated(spec, entity, arm, why, state.version, now_ms))
    if state.paused is not None and spec.health.reinstated_at(state.paused["arm"], entity) > state.paused["at_ms"]:
        alerts.append(_reinstated(spec, entity, state.paused["arm"], state.paused, state.version, now_ms))
        state.paused = None
    for key in list(state.alerted):
        arm = key.split("/", 1)[1]
        if spec.health.reinstated_at(arm, entity) > state.alerted[key]:
            del state.alerted[key]  # evidence restarts: a new breach alerts again
    return alerts


def retire(state: EntityState, spec: ExperimentSpec, entity: str, now_ms: int) -> list[dict[str, Any]]:
    """Hold at 0 the arms retired by hand (the spec's `health.retired`) and not reinstated
    since; returns their Alert records (action retire), once per retirement."""
    alerts = []
    for arm in spec.arm_names:
        if arm in state.actions or not spec.health.is_retired(arm, entity):
            continue
        state.actions[arm] = {"action": "retire", "kind": "operator", "at_ms": spec.health.retired_at(arm, entity),
                              "value": 0.0, "threshold": 0.0}
        alerts.append(alert_record(spec, entity, arm, "ROLLBACK", "INFO", 0.0, 0.0,
                                   f"{arm}: retired for {entity!r} by an operator; weight 0 until reinstated",
                                   state.version, now_ms, guardrail="operator", action="retire"))
    return alerts


def _reinstated(spec: ExperimentSpec, entity: str, arm: str, why: dict[str, Any], version: int,
                now_ms: int) -> dict[str, Any]:
    return alert_record(spec, entity, arm, "ROLLBACK", "INFO", why.get("value", 0.0), why.get("threshold", 0.0),
                        f"{arm}: reinstated for {entity!r} after {why.get('action', 'pause')} by {why['kind']}; "
                        f"its evidence starts again", version, now_ms, guardrail=why["kind"], action="reinstate")


def pins(state: EntityState, spec: ExperimentSpec) -> tuple[dict[str, float], list[str]]:
    """The weights the entity's health and decisions fix, and why (for the table's reason)."""
    if state.paused is not None:
        return ({a: (1.0 if a == spec.default_arm else 0.0) for a in spec.arm_names},
                [f"paused by {state.paused['kind']} of {state.paused['arm']}: the default arm serves"])
    fixed: dict[str, float] = {}
    notes = []
    for arm, why in state.actions.items():
        fixed[arm] = 0.0
        notes.append(f"{arm} held at 0 ({why['action']} by {why['kind']})")
    if fixed and all(fixed.get(a) == 0.0 for a in spec.arm_names):
        notes.append(f"every arm is held at 0: the default arm {spec.default_arm} serves")
        return {a: (1.0 if a == spec.default_arm else 0.0) for a in spec.arm_names}, notes
    if state.shipped is not None and state.shipped["winner"] not in fixed:
        winner, holdback = state.shipped["winner"], state.shipped["holdback"]
        fixed[winner] = 1.0 - holdback
        others = [a for a in spec.arm_names if a != winner and a not in fixed]
        if spec.default_arm in others:
            fixed.update({a: (holdback if a == spec.default_arm else 0.0) for a in others})
        elif others:
            fixed.update({a: holdback / len(others) for a in others})
        notes.append(f"shipped {winner}: {1 - holdback:.0%} of traffic, {holdback:.0%} held back")
    return fixed, notes


def alert_record(spec: ExperimentSpec, entity: str, arm: str | None, kind: str, severity: str, value: float,
                 threshold: float, message: str, version: int, now_ms: int, *, guardrail: str,
                 action: str) -> dict[str, Any]:
    """An `Alert` Avro record."""
    return {"event_id": str(uuid.uuid4()), "experiment_id": spec.id, "entity": entity or None, "arm": arm,
            "kind": kind, "severity": severity, "value": float(value) if math.isfinite(value) else 0.0,
            "threshold": float(threshold), "message": message, "weights_version": version or None,
            "guardrail": guardrail, "action": action, "timestamp": now_ms}
