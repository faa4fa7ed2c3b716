"""Entity state + experiment spec → the next WeightTable: policy, then guardrails.

`next_weight_table` is a plain function of the state, the spec and the clock reading it is
given; the worker calls it on its publication interval for every (experiment, entity)
whose statistics changed, sends the record, and keeps the new version and allocation in
the state.

Arms removed from the spec keep their place in the state (serve records refer to arms by
index) but get weight 0: the guardrails pin them to 0, so their buckets move to the live
arms with minimum churn, and the table still lists them with no buckets.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sluice.core.allocation import Allocation
from sluice.core.decisions import decide
from sluice.core.stats.comparison import ArmData
from sluice.core.guardrails import apply_guardrails
from sluice.core.policies import PolicyContext, policy_probabilities
from sluice.core.spec import ExperimentSpec
from sluice.core.stats.significance import srm_test
from sluice.core.sufficient import DAY_MS, ArmCounters, ArmStatistics, window_hours
from streams.state import EntityState, entity_of

SERVES, COUNT, SUM, SUM_SQ = ArmCounters.SERVES, ArmCounters.COUNT, ArmCounters.TOTAL, ArmCounters.TOTAL_SQ


@dataclass(frozen=True)
class Publication:
    record: dict[str, Any]  # the WeightTable Avro record
    weights: dict[str, float]
    allocation: Allocation
    guardrails: tuple[str, ...] = ()  # rules that changed the policy's weights
    srm_p_value: float | None = None  # for static weights: do the window's serves fit them?


def window_totals(state: EntityState, window_ms: int) -> NDArray[np.float64]:
    """Per arm of `state.arms`: [serves, count, sum, sum_sq] summed over the window ending
    at the newest event time, shape (K, 4)."""
    return state.hours.window(state.max_event_ms, window_ms).values[:, :len(state.arms)].T


def next_weight_table(state: EntityState, spec: ExperimentSpec, routing: bytes, now_ms: int) -> Publication:
    """The weight table to publish now; updates nothing (see `mark_published`)."""
    for arm in spec.arm_names:  # arms new to the spec join the state (and the allocation)
        state.arm_index(arm)
    arms = tuple(state.arms)
    totals = window_totals(state, spec.window_ms)
    live = [state.arms.index(a) for a in spec.arm_names]

    live_stats = ArmStatistics.of(totals[live, COUNT], totals[live, SUM], totals[live, SUM_SQ])
    ctx = PolicyContext(spec.arm_names, spec.reward.type)
    proposed_live = policy_probabilities(spec.policy.name, spec.policy.params, live_stats, ctx)
    proposed = np.zeros(len(arms))
    proposed[live] = proposed_live

    removed = [a for a in arms if a not in spec.arm_names]
    config = spec.guardrails
    if removed:
        config = config.model_copy(update={"pins": {**config.pins, **{a: 0.0 for a in removed}}})
    previous = None
    if state.allocation is not None and state.num_buckets == spec.num_buckets:
        previous = Allocation.from_ranges(state.allocation, state.num_buckets)
    result = apply_guardrails(proposed, config, arms=arms, observations=totals[:, COUNT], previous=previous,
                              num_buckets=spec.num_buckets)

    policy_part = ", ".join(f"{a}={p:.4g}" for a, p in zip(spec.arm_names, proposed_live))
    reason = f"{spec.policy.name} over {int(totals[live, COUNT].sum())} observations: {policy_part}; {result.reason()}"
    first, _ = window_hours(state.max_event_ms, spec.window_ms)
    record = {
        "event_id": str(uuid.uuid4()),
        "experiment_id": spec.id,
        "entity": entity_of(routing),
        "version": state.version + 1,
        "num_buckets": spec.num_buckets,
        "arms": result.allocation.to_arm_weights(arms),
        "policy": spec.policy.name,
        "reason": reason,
        "statistics": [
            {"arm": a, "serves": int(t[SERVES]), "count": int(t[COUNT]), "sum": float(t[SUM]),
             "sum_squares": float(t[SUM_SQ])}
            for a, t in zip(arms, totals)
        ],
        "window_start": max(0, first * 3_600_000),
        "window_end": state.max_event_ms,
        "computed_at": now_ms,
    }
    srm = None
    if spec.policy.name == "static" and totals[live, COUNT].sum() > 0:
        srm = srm_test(totals[live, COUNT], result.weights[live]).p_value
    rules = tuple(dict.fromkeys(a.rule for a in result.actions if a.rule != "quantize"))
    return Publication(record, dict(zip(arms, result.weights.tolist())), result.allocation, rules, srm)


def mark_published(state: EntityState, publication: Publication) -> None:
    state.version = publication.record["version"]
    state.allocation = publication.allocation.to_lists()
    state.num_buckets = publication.allocation.num_buckets
    state.published_changes = state.changes


def decision_record(state: EntityState, spec: ExperimentSpec, routing: bytes, now_ms: int) -> dict[str, Any] | None:
    """The Decision record for the window of `state` (`sluice.core.decisions.decide` with
    the spec's criteria, the default arm as control, the published weights in force), or
    None while fewer than two live arms exist."""
    arms = list(spec.arm_names)
    if len(arms) < 2:
        return None
    totals = window_totals(state, spec.window_ms)
    live = [state.arms.index(a) for a in arms]
    n, s, ss = totals[live, COUNT], totals[live, SUM], totals[live, SUM_SQ]
    data = ArmData.binary(n, s, arms) if spec.reward.type == "binary" else ArmData.continuous(n, s, ss, arms)
    weights = None
    if state.allocation is not None:
        counts = Allocation.from_ranges(state.allocation, state.num_buckets).counts
        weights = counts[live] / max(1, counts[live].sum())
    span_days = max(0.0, (state.max_event_ms - state.first_event_ms) / DAY_MS)
    decision = decide(data, spec.criteria, days_in_window=min(spec.window_days, span_days), days_running=span_days,
                      control=arms.index(spec.default_arm), current_weights=weights)
    return {
        "event_id": str(uuid.uuid4()), "experiment_id": spec.id, "entity": entity_of(routing) or None,
        "verdict": decision.verdict.value.upper(), "winner": decision.winner, "rule": decision.rule.value,
        "reason": decision.reason,
        "arm_actions": [{"arm": a.name, "action": a.action.value.upper(), "reason": a.reason} for a in decision.arms],
        "statistics": [{"arm": a, "serves": int(totals[i, SERVES]), "count": int(totals[i, COUNT]),
                        "sum": float(totals[i, SUM]), "sum_squares": float(totals[i, SUM_SQ])}
                       for a, i in zip(arms, live)],
        "timestamp": now_ms,
    }
