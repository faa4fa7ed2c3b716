"""Weight guardrails: invariants (hypothesis), relaxations, the record of what acted."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sluice.core.allocation import Allocation, allocate, minimum_churn
from sluice.core.guardrails import GuardrailConfig, GuardrailError, GuardrailResult, apply_guardrails

PROPERTY = settings(derandomize=True, max_examples=200, deadline=None)
ARMS = ("a", "b", "c", "d", "e", "f")


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[GuardrailConfig, tuple[str, ...], np.ndarray, Allocation | None, int]:
    k = draw(st.integers(2, 6))
    arms = ARMS[:k]
    n = draw(st.sampled_from([100, 1000, 10_000]))
    floor = draw(st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.4]))
    cap = draw(st.sampled_from([1.0, 0.9, 0.5, 0.3]).filter(lambda c: c >= floor))
    step = draw(st.sampled_from([None, 0.0001, 0.01, 0.05, 0.2]))
    pinned = draw(st.lists(st.sampled_from(arms), unique=True, max_size=k))
    pins = {a: draw(st.sampled_from([0.0, 0.0, 0.05, 0.1, 0.3])) for a in pinned}
    if sum(pins.values()) > 1:
        pins = {a: 0.0 for a in pins}
    if all(v == 0 for v in pins.values()) and len(pins) == k:
        pins.pop(arms[0])
    proposal = np.array(draw(st.lists(st.floats(0, 1), min_size=k, max_size=k)))
    previous = None
    if draw(st.booleans()):
        prev_weights = draw(st.lists(st.floats(0, 1), min_size=k, max_size=k).filter(lambda w: sum(w) > 0))
        previous = allocate(prev_weights, n)
    config = GuardrailConfig(floor=floor, cap=cap, max_step=step, pins=pins)
    return config, arms, proposal, previous, n


def check_invariants(result: GuardrailResult, config: GuardrailConfig, arms: tuple[str, ...], previous: Allocation | None, n: int) -> None:
    counts, weights = result.counts, result.weights
    relaxed = {r.constraint: r.used for r in result.relaxations}
    # outputs are bucket shares that sum to 1 exactly, realized by the allocation
    assert counts.sum() == n
    assert np.array_equal(weights, counts / n)
    assert np.array_equal(result.allocation.counts, counts)
    killed = np.array([config.pins.get(a) == 0 for a in arms])
    pinned = np.array([config.pins.get(a, 0) > 0 for a in arms])
    free = ~killed & ~pinned
    assert np.all(weights[killed] == 0)
    if "pins" not in relaxed:
        pin_values = np.array([config.pins.get(a, 0) for a in arms])
        assert np.all(np.abs(weights[pinned] - pin_values[pinned]) <= 1 / n + 1e-12)
    floor = relaxed.get("floor", config.floor)
    cap = relaxed.get("cap", config.cap)
    assert np.all(weights[free] >= floor - 1e-12)
    assert np.all(weights[free] <= cap + 1e-12)
    if previous is not None and config.max_step is not None:
        step = relaxed.get("max_step", max(config.max_step, 1 / n))
        delta = np.abs(weights - previous.with_arms(len(arms)).shares)
        assert np.all(delta[free] <= step + 1e-12)
        # the allocation moved no more buckets than the weights required
        assert minimum_churn(previous.counts, counts) == np.count_nonzero(
            previous.with_arms(len(arms)).dense() != result.allocation.dense()
        )


@PROPERTY
@given(scenario=scenarios())
def test_invariants_hold_or_the_relaxed_value_is_reported(scenario: tuple) -> None:
    config, arms, proposal, previous, n = scenario
    result = apply_guardrails(proposal, config, arms=arms, previous=previous, num_buckets=n)
    check_invariants(result, config, arms, previous, n)
    # a floor or cap is relaxed only when the free arms really cannot meet it
    nf = sum(1 for a in arms if a not in config.pins)
    left = n - round(sum(config.pins.values()) * n)
    for r in result.relaxations:
        if r.constraint == "floor":
            assert nf * (config.floor * n + 1) > left
        if r.constraint == "cap":
            assert nf * (config.cap * n) < left + 1e-9 * n + nf
    if nf and nf * (config.floor * n + 1) <= left:
        assert "floor" not in {r.constraint for r in result.relaxations}


@PROPERTY
@given(scenario=scenarios(), second=st.lists(st.floats(0, 1), min_size=6, max_size=6))
def test_under_an_unchanged_config_no_constraint_is_relaxed_twice(scenario: tuple, second: list[float]) -> None:
    # Once a table satisfies the config, every later update keeps every limit exactly,
    # max step included: relaxations only come from a change (new pins, a tighter floor).
    config, arms, proposal, _, n = scenario
    first = apply_guardrails(proposal, config, arms=arms, num_buckets=n)
    if first.relaxations:
        return
    result = apply_guardrails(second[: len(arms)], config, arms=arms, previous=first.allocation)
    assert result.relaxations == ()
    check_invariants(result, config, arms, first.allocation, n)


def test_a_kill_takes_effect_at_once_and_the_step_limit_says_it_gave_way() -> None:
    previous = allocate([0.5, 0.25, 0.25], 10_000)
    config = GuardrailConfig(max_step=0.05, pins={"a": 0.0})
    result = apply_guardrails([0.5, 0.25, 0.25], config, arms=("a", "b", "c"), previous=previous)
    assert result.weights.tolist() == [0.0, 0.5, 0.5]
    (relaxation,) = result.relaxations
    assert relaxation.constraint == "max_step" and relaxation.configured == 0.05 and relaxation.used == 0.25
    assert "kill: a set to 0" in result.reason()
    assert "relaxed max_step from 0.05 to 0.25" in result.reason()


def test_cap_and_floor_keep_the_proposal_ratios_among_the_other_arms() -> None:
    config = GuardrailConfig(floor=0.05, cap=0.5)
    result = apply_guardrails([0.8, 0.15, 0.05, 0.0], config, arms=("a", "b", "c", "d"))
    # a capped at 0.5, d raised to 0.05; b and c share the remaining 0.45 at 3:1
    assert result.weights.tolist() == [0.5, 0.3375, 0.1125, 0.05]
    rules = [a.rule for a in result.actions]
    assert rules == ["floor", "cap", "quantize"]
    assert result.actions[0].arms == ("d",) and result.actions[1].arms == ("a",)


def test_max_step_limits_how_fast_traffic_moves() -> None:
    config = GuardrailConfig(max_step=0.1)
    weights = allocate([0.5, 0.5], 10_000)
    history = []
    for _ in range(4):
        result = apply_guardrails([1.0, 0.0], config, arms=("old", "new"), previous=weights)
        weights = result.allocation
        history.append(result.weights[0])
    assert history == [0.6, 0.7, 0.8, 0.9]


def test_warm_up_uses_fixed_weights_until_every_live_arm_has_enough_observations() -> None:
    config = GuardrailConfig(warmup_min_observations=100, warmup_weights={"a": 0.5, "b": 0.25, "c": 0.25})
    arms = ("a", "b", "c")
    early = apply_guardrails([0.9, 0.05, 0.05], config, arms=arms, observations=[500, 99, 300])
    assert early.weights.tolist() == [0.5, 0.25, 0.25]
    assert early.actions[0].rule == "warmup" and early.actions[0].arms == ("b",)
    later = apply_guardrails([0.9, 0.05, 0.05], config, arms=arms, observations=[500, 100, 300])
    assert later.weights.tolist() == [0.9, 0.05, 0.05]
    with pytest.raises(GuardrailError, match="observations are required"):
        apply_guardrails([0.9, 0.05, 0.05], config, arms=arms)


def test_a_killed_arm_does_not_hold_the_warm_up_back() -> None:
    config = GuardrailConfig(warmup_min_observations=100, pins={"c": 0.0})
    result = apply_guardrails([0.9, 0.1, 0.0], config, arms=("a", "b", "c"), observations=[100, 100, 0])
    assert result.weights.tolist() == [0.9, 0.1, 0.0]


def test_a_pinned_arm_entering_does_not_hold_the_warm_up_back() -> None:
    """A new model pinned at its entry weight has few observations by design; the policy
    keeps deciding the other arms' shares of the rest."""
    config = GuardrailConfig(warmup_min_observations=100, pins={"new": 0.1})
    result = apply_guardrails([0.8, 0.2, 0.0], config, arms=("a", "b", "new"), observations=[500, 300, 3])
    assert result.weights.tolist() == pytest.approx([0.72, 0.18, 0.1])
    assert "warmup" not in {a.rule for a in result.actions}


def test_impossible_floor_is_lowered_to_an_equal_share_and_reported() -> None:
    config = GuardrailConfig(floor=0.3)
    result = apply_guardrails([0.7, 0.1, 0.1, 0.1], config, arms=("a", "b", "c", "d"))
    assert result.weights.tolist() == [0.25, 0.25, 0.25, 0.25]
    (relaxation,) = result.relaxations
    assert (relaxation.constraint, relaxation.configured, relaxation.used) == ("floor", 0.3, 0.25)
    assert "4 free arm(s) x floor 0.3" in relaxation.reason


def test_pins_on_every_live_arm_are_scaled_to_one_and_reported() -> None:
    config = GuardrailConfig(pins={"a": 0.2, "b": 0.2, "c": 0.0})
    result = apply_guardrails([0.3, 0.3, 0.4], config, arms=("a", "b", "c"))
    assert result.weights.tolist() == [0.5, 0.5, 0.0]
    assert [r.constraint for r in result.relaxations] == ["pins"]


def test_pins_hold_and_the_free_arms_share_the_rest() -> None:
    config = GuardrailConfig(pins={"a": 0.1})
    result = apply_guardrails([0.0, 0.6, 0.4], config, arms=("a", "b", "c"))
    assert result.weights.tolist() == [0.1, 0.54, 0.36]
    assert result.relaxations == ()


def test_new_arms_start_from_zero_buckets() -> None:
    previous = allocate([0.5, 0.5], 1000)
    config = GuardrailConfig(floor=0.1, max_step=0.2)
    result = apply_guardrails([0.45, 0.45, 0.1], config, arms=("a", "b", "c"), previous=previous)
    assert result.weights.tolist() == [0.45, 0.45, 0.1]
    assert result.relaxations == ()
    assert np.count_nonzero(previous.with_arms(3).dense() != result.allocation.dense()) == 100


def test_every_arm_killed_is_an_error() -> None:
    with pytest.raises(GuardrailError, match="every arm is killed"):
        apply_guardrails([0.5, 0.5], GuardrailConfig(pins={"a": 0, "b": 0}), arms=("a", "b"))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"proposed": [0.5, 0.5, 0.0]}, r"proposed must have shape \(2,\)"),
        ({"proposed": [0.5, float("nan")]}, "proposed must be finite"),
        ({"config": GuardrailConfig(pins={"zz": 0.1})}, r"pins names unknown arm\(s\) \['zz'\]"),
        ({"arms": ("a", "a")}, "arms must be non-empty and unique"),
        ({"previous": allocate([1, 1, 1], 100)}, "previous allocation has 3 arms"),
    ],
)
def test_bad_inputs_are_rejected_naming_the_field(kwargs: dict, fragment: str) -> None:
    args = {"proposed": [0.5, 0.5], "config": GuardrailConfig(), "arms": ("a", "b")} | kwargs
    with pytest.raises(GuardrailError, match=fragment):
        apply_guardrails(args.pop("proposed"), args.pop("config"), **args)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"floor": 0.5, "cap": 0.2}, r"floor \(0.5\) must be <= cap \(0.2\)"),
        ({"floor": -0.1}, "floor"),
        ({"max_step": 0}, "max_step"),
        ({"pins": {"a": 0.7, "b": 0.6}}, "pins must sum to at most 1"),
        ({"pins": {"a": 1.5}}, r"pins\['a'\] must be in \[0, 1\], but 1.5"),
        ({"warmup_weights": {"a": 0.0}}, "warmup_weights must have a positive sum"),
        ({"flor": 0.1}, "flor"),
    ],
)
def test_config_validation_names_the_field_and_value(fields: dict, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        GuardrailConfig(**fields)
