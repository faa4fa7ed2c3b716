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
from sluice.core.sufficient import DAY_MS, ArmCounters, ArmStatistics, window_hours
from streams import health
from streams.state import EntityState, entity_of

SERVES, COUNT, SUM, SUM_SQ = ArmCounters.SERVES, ArmCounters.COUNT, ArmCounters.TOTAL, ArmCounters.TOTAL_SQ


@dataclass(frozen=True)
class Publication:
    record: dict[str, Any]  # the WeightTable Avro record
    weights: dict[str, float]
    allocation: Allocation
    guardrails: tuple[str, ...] = ()  # rules that changed the policy's weights


def window_totals(state: EntityState, window_ms: int) -> NDArray[np.float64]:
    """Per arm of `state.arms`: [serves, count, sum, sum_sq] summed over the window ending
    at the newest event time, shape (K, 4)."""
    return state.hours.window(state.max_event_ms, window_ms).values[:, :len(state.arms)].T


def next_weight_table(state: EntityState, spec: ExperimentSpec, routing: bytes, now_ms: int, *,
                      fixed: dict[str, float] | None = None, notes: list[str] | tuple[str, ...] = (),
                      prior: Any = None) -> Publication:
    """The weight table to publish now; updates nothing (see `mark_published`).

    `fixed`: weights the entity's health or decisions hold (a rolled-back arm at 0, a paused
    entity's default arm at 1, a shipped winner), with `notes` saying why for the reason;
    `prior`: the policy's prior for this entity (a pooled prior), if any."""
    for arm in spec.arm_names:  # arms new to the spec join the state (and the allocation)
        state.arm_index(arm)
    arms = tuple(state.arms)
    totals = window_totals(state, spec.window_ms)
    live = [state.arms.index(a) for a in spec.arm_names]

    live_stats = ArmStatistics.of(totals[live, COUNT], totals[live, SUM], totals[live, SUM_SQ])
    ctx = PolicyContext(spec.arm_names, spec.reward.type, prior)
    proposed_live = policy_probabilities(spec.policy.name, spec.policy.params, live_stats, ctx)
    proposed = np.zeros(len(arms))
    proposed[live] = proposed_live

    removed = [a for a in arms if a not in spec.arm_names]
    config = spec.guardrails
    if removed or fixed:
        pins = {} if fixed and sum(fixed.values()) > 0 else dict(config.pins)  # fixed weights replace the spec's pins
        config = config.model_copy(update={"pins": {**pins, **{a: 0.0 for a in removed}, **(fixed or {})}})
    previous = None
    if state.allocation is not None and state.num_buckets == spec.num_buckets:
        previous = Allocation.from_ranges(state.allocation, state.num_buckets)
    result = apply_guardrails(proposed, config, arms=arms, observations=totals[:, COUNT], previous=previous,
                              num_buckets=spec.num_buckets)

    policy_part = ", ".join(f"{a}={p:.4g}" for a, p in zip(spec.arm_names, proposed_live))
    reason = f"{spec.policy.name} over {int(totals[live, COUNT].sum())} observations: {policy_part}; {result.reason()}"
    if notes:
        reason += "; " + "; ".join(notes)
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
    rules = tuple(dict.fromkeys(a.rule for a in result.actions if a.rule != "quantize"))
    return Publication(record, dict(zip(arms, result.weights.tolist())), result.allocation, rules)


# Table versions whose weights are kept, so that serves logged under them join the SRM test:
# up to 256 (minutes of publications), fewer for many arms (about 64 KB of them at most).
RECENT_VERSIONS, RECENT_WEIGHTS_BYTES = 256, 64 * 1024


def mark_published(state: EntityState, publication: Publication) -> None:
    state.version = publication.record["version"]
    state.allocation = publication.allocation.to_lists()
    state.num_buckets = publication.allocation.num_buckets
    state.published_changes = state.changes
    state.recent_weights.append([state.version, [publication.weights[a] for a in state.arms]])
    keep = max(8, min(RECENT_VERSIONS, RECENT_WEIGHTS_BYTES // (24 * len(state.arms))))
    del state.recent_weights[:-keep]


def current_weights(state: EntityState) -> dict[str, float]:
    """The weights of the latest published table, by arm."""
    if not state.recent_weights:
        return {}
    return dict(zip(state.arms, state.recent_weights[-1][1]))


def decision_record(state: EntityState, spec: ExperimentSpec, routing: bytes, now_ms: int) -> dict[str, Any] | None:
    """The Decision record for the window of `state` (`sluice.core.decisions.decide` with
    the spec's criteria, the default arm as control, the published weights in force), or
    None while fewer than two live arms exist or an arm is still entering (`ArmSpec.entry`:
    its entry weight holds until `until_observations`, then it is judged with the rest, so
    a ship cannot starve a newcomer on its first few serves). Arms held at 0 (rolled back,
    retired) are not judged: they get no data, and a verdict must not wait for them."""
    arms = [a for a in spec.arm_names if a not in state.actions]
    if len(arms) < 2 or spec.default_arm not in arms or _entering(state, spec, arms):
        return None
    live = [state.arm_index(a) for a in arms]  # an arm new to the spec joins the state, with no data yet
    totals = window_totals(state, spec.window_ms)
    n, s, ss = totals[live, COUNT], totals[live, SUM], totals[live, SUM_SQ]
    # Rewards can be read before their serves (two topics): successes are capped at the
    # serves, as the policy's Beta posterior caps them, rather than leaving the window unjudged.
    data = ArmData.binary(n, np.minimum(s, n), arms) if spec.reward.type == "binary" \
        else ArmData.continuous(n, s, ss, arms)
    weights = None
    if state.allocation is not None:
        counts = Allocation.from_ranges(state.allocation, state.num_buckets).counts
        weights = counts[live] / max(1, counts[live].sum())
    span_days = max(0.0, (state.max_event_ms - state.first_event_ms) / DAY_MS)
    decision = decide(data, spec.criteria, days_in_window=min(spec.window_days, span_days), days_running=span_days,
                      control=arms.index(spec.default_arm), current_weights=weights,
                      adaptive=spec.policy.name != "static", floor=spec.guardrails.floor)
    return {
        "event_id": str(uuid.uuid4()), "experiment_id": spec.id, "entity": entity_of(routing) or None,
        "verdict": decision.verdict.value.upper(), "winner": decision.winner, "rule": decision.rule.value,
        "reason": decision.reason,
        "arm_actions": [{"arm": a.name, "action": a.action.value.upper(), "reason": a.reason} for a in decision.arms],
        "statistics": [{"arm": a, "serves": int(totals[i, SERVES]), "count": int(totals[i, COUNT]),
                        "sum": float(totals[i, SUM]), "sum_squares": float(totals[i, SUM_SQ])}
                       for a, i in zip(arms, live)],
        "changes": None,
        "timestamp": now_ms,
    }


@dataclass(frozen=True)
class Round:
    """What one publication round of an (experiment, entity) produced."""

    publication: Publication
    alerts: list[dict[str, Any]]
    decision: dict[str, Any] | None
    evaluation: health.Evaluation


def publication_round(state: EntityState, spec: ExperimentSpec, routing: bytes, now_ms: int, *,
                      decision: dict[str, Any] | None = None, prior: Any = None) -> Round:
    """One (experiment, entity)'s round, as the worker runs it every publish interval: lift
    what was reinstated and hold what was retired by hand; act on `decision` (when given,
    and the spec says act); test its health and act; then the new weight table, marked
    published in `state`."""
    entity = entity_of(routing)
    alerts = health.lift(state, spec, entity, now_ms)
    alerts += health.retire(state, spec, entity, now_ms)
    if decision is not None and spec.decisions == "act":
        decision["changes"] = act_on_decision(state, spec, decision, now_ms)
    reopened = reopen_ship(state, spec)
    evaluation = health.evaluate(state, spec, entity, current_weights(state))
    alerts += health.act(state, spec, entity, evaluation, now_ms)
    fixed, notes = health.pins(state, spec)
    notes = [*reopened, *notes]
    entering, why = entry_pins(state, spec, fixed)
    if entering:
        fixed = {**(fixed or dict(spec.guardrails.pins)), **entering}  # fixed weights replace the spec's pins
        notes = [*notes, *why]
    publication = next_weight_table(state, spec, routing, now_ms, fixed=fixed, notes=notes, prior=prior)
    mark_published(state, publication)
    return Round(publication, alerts, decision, evaluation)


def reopen_ship(state: EntityState, spec: ExperimentSpec) -> list[str]:
    """A ship settles the arms it was judged among. An arm added since (a newly trained
    model entering) reopens the entity to its policy: the newcomer enters at its entry
    weight, and the next decision judges it with the rest. Held by the ship, it would get
    no traffic and so never a verdict. Returns the note for the table's reason."""
    if state.shipped is None or "arms" not in state.shipped:
        return []
    newcomers = [a for a in spec.arm_names if a not in state.shipped["arms"]]
    if not newcomers:
        return []
    winner, state.shipped = state.shipped["winner"], None
    state.decision = None  # the next verdict is published and acted on, even the same ship again
    return [f"{', '.join(newcomers)} entered after {winner} was shipped: the policy weighs every arm again"]


def _entering(state: EntityState, spec: ExperimentSpec, arms: list[str]) -> list[str]:
    """The arms of `arms` that have fewer observations in the window than their entry needs."""
    totals = window_totals(state, spec.window_ms)
    return [a.name for a in spec.arms if a.entry is not None and a.name in arms and
            (a.name not in state.arms or totals[state.arms.index(a.name), COUNT] < a.entry.until_observations)]


def entry_pins(state: EntityState, spec: ExperimentSpec, fixed: dict[str, float] | None) -> tuple[dict[str, float], list[str]]:
    """The arms still entering (`ArmSpec.entry`: fewer observations in the window than
    `until_observations`) at their entry weight, unless health or a decision holds them
    already; and a note per arm for the table's reason."""
    for name in spec.arm_names:  # a new arm joins the state now, so its first table already holds it
        state.arm_index(name)
    totals = window_totals(state, spec.window_ms)
    pins, notes = {}, []
    for arm in spec.arms:
        if arm.entry is None or (fixed and arm.name in fixed):
            continue
        seen = int(totals[state.arms.index(arm.name), COUNT])
        if seen < arm.entry.until_observations:
            pins[arm.name] = arm.entry.weight
            notes.append(f"{arm.name} enters at {arm.entry.weight:g} until {arm.entry.until_observations} "
                         f"observations ({seen} so far)")
    return pins, notes


def act_on_decision(state: EntityState, spec: ExperimentSpec, decision: dict[str, Any], now_ms: int) -> str:
    """With `decisions: act`, make a Decision move weights for its entity and say what moved:
    SHIP gives the winner all traffic but the spec's holdback; an arm the decision STOPs
    under KILL or CONTINUE is retired (held at 0 until reinstated). Control is never
    retired, nor the last live arm. Returns the sentence for the Decision's `changes`."""
    entity = decision["entity"] or ""
    changes = []
    if decision["verdict"] == "SHIP" and decision["winner"] and (state.shipped or {}).get("winner") != decision["winner"]:
        state.shipped = {"winner": decision["winner"], "holdback": spec.holdback, "at_ms": now_ms,
                         "arms": list(spec.arm_names)}
        changes.append(f"shipped {decision['winner']} for {entity!r}: {1 - spec.holdback:.0%} of traffic, "
                       f"{spec.holdback:.0%} held back")
    elif decision["verdict"] in ("KILL", "CONTINUE"):
        live = [a for a in spec.arm_names if a not in state.actions]
        for action in decision["arm_actions"]:
            arm = action["arm"]
            if action["action"] != "STOP" or arm == spec.default_arm or arm not in live or len(live) <= 1:
                continue
            state.actions[arm] = {"action": "kill", "kind": "decision", "at_ms": now_ms, "value": 0.0,
                                  "threshold": 0.0, "rule": decision["rule"]}
            live.remove(arm)
            changes.append(f"retired {arm} for {entity!r} ({action['reason']})")
    return "; ".join(changes) or "nothing to change"
