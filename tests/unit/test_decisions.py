"""`decide`: each rule fires on the data it is meant for, in the documented order, and the
per-arm actions follow; `DecisionCriteria` validates with errors naming field and value."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from sluice.core.decisions import ArmAction, DecisionCriteria, Rule, Verdict, decide
from sluice.core.stats.checks import StatsInputError
from sluice.core.stats.comparison import ArmData

CRITERIA = DecisionCriteria()
FIXED = DecisionCriteria(sequential=False)


def rates(n: list[int], rates_: list[float], names: str = "abcdefgh") -> ArmData:
    return ArmData.binary(n, [round(r * m) for r, m in zip(rates_, n, strict=True)], list(names[: len(n)]))


def actions(decision) -> dict[str, ArmAction]:  # type: ignore[no-untyped-def]
    return {a.name: a.action for a in decision.arms}


# --- criteria ------------------------------------------------------------------------------


def test_criteria_defaults() -> None:
    c = DecisionCriteria()
    assert (c.min_window_days, c.min_events_per_arm, c.min_uplift, c.confidence, c.max_duration_days) == (
        7, 1000, 0.03, 0.95, 14
    )
    assert c.alpha == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("field", "value"),
    [("confidence", 1.5), ("min_events_per_arm", 0), ("min_uplift", -0.1), ("min_window_days", 0), ("srm_alpha", 0)],
)
def test_criteria_errors_name_the_field_and_value(field: str, value: float) -> None:
    with pytest.raises(ValidationError) as info:
        DecisionCriteria(**{field: value})
    err = info.value.errors()[0]
    assert err["loc"] == (field,) and err["input"] == value


def test_criteria_cross_check_and_immutability() -> None:
    with pytest.raises(ValidationError, match=r"max_duration_days must be >= min_window_days \(7.0\), but 3.0"):
        DecisionCriteria(max_duration_days=3)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        DecisionCriteria(min_uplfit=0.1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        CRITERIA.min_uplift = 0.5  # type: ignore[misc]


# --- rules, in order -----------------------------------------------------------------------


def test_srm_comes_first_and_freezes_every_arm() -> None:
    data = rates([20_000, 20_000], [0.10, 0.13])  # a clear winner, but...
    d = decide(data, CRITERIA, days_in_window=7, days_running=8, expected_serves=[0.55, 0.45])
    assert (d.verdict, d.rule) == (Verdict.ITERATE, Rule.SAMPLE_RATIO_MISMATCH)
    assert set(actions(d).values()) == {ArmAction.KEEP}
    assert "Sample ratio mismatch" in d.reason and d.numbers["srm_p_value"] < CRITERIA.srm_alpha
    # Even before the minimum data, broken assignment is reported.
    early = decide(rates([900, 1100], [0.1, 0.1]), CRITERIA, days_in_window=1, days_running=1, expected_serves=[1, 1])
    assert early.rule == Rule.SAMPLE_RATIO_MISMATCH


def test_serve_counts_matching_the_weights_pass_the_srm_check() -> None:
    data = rates([20_000, 20_100], [0.10, 0.13])
    d = decide(data, CRITERIA, days_in_window=7, days_running=8, expected_serves=[0.5, 0.5])
    assert d.rule != Rule.SAMPLE_RATIO_MISMATCH and d.srm is not None


def test_too_few_days_or_events_means_continue_and_keep() -> None:
    d = decide(rates([20_000, 20_000], [0.10, 0.13]), CRITERIA, days_in_window=5, days_running=5)
    assert (d.verdict, d.rule) == (Verdict.CONTINUE, Rule.MINIMUM_DATA)
    assert "5 of 7 days" in d.reason
    assert set(actions(d).values()) == {ArmAction.KEEP}

    d = decide(rates([20_000, 800], [0.10, 0.13]), CRITERIA, days_in_window=7, days_running=7)
    assert d.rule == Rule.MINIMUM_DATA and "fewer than 1000 events in b" in d.reason


def test_out_of_time_before_minimum_data_means_iterate_back_to_control() -> None:
    d = decide(rates([5_000, 600], [0.10, 0.13]), CRITERIA, days_in_window=7, days_running=14)
    assert (d.verdict, d.rule) == (Verdict.ITERATE, Rule.OUT_OF_TIME_BEFORE_MINIMUM_DATA)
    assert actions(d) == {"a": ArmAction.INCREASE, "b": ArmAction.STOP}


def test_a_clear_winner_ships_and_takes_all_traffic() -> None:
    d = decide(rates([20_000, 20_000, 20_000], [0.10, 0.125, 0.104]), CRITERIA, days_in_window=7, days_running=8)
    assert (d.verdict, d.rule, d.winner) == (Verdict.SHIP, Rule.WINNER, "b")
    assert actions(d) == {"a": ArmAction.STOP, "b": ArmAction.INCREASE, "c": ArmAction.STOP}
    assert d.numbers["uplift"] == pytest.approx(0.25)
    assert d.numbers["p_value"] <= CRITERIA.alpha
    assert "Ship b" in d.reason and "+25.00%" in d.reason


def test_fixed_horizon_ships_what_the_always_valid_test_is_not_yet_sure_of() -> None:
    # +7 % on 20,000 events per arm: z-test p ≈ 0.02, mSPRT p ≈ 0.4.
    data = rates([20_000, 20_000], [0.10, 0.107])
    fixed = decide(data, FIXED, days_in_window=7, days_running=8)
    sequential = decide(data, CRITERIA, days_in_window=7, days_running=8)
    assert fixed.verdict == Verdict.SHIP and "z-test" in fixed.reason
    assert sequential.verdict == Verdict.CONTINUE and "mSPRT" in sequential.reason
    assert sequential.comparison is not None
    assert sequential.comparison.contrasts[0].p_value < 0.05 < sequential.comparison.contrasts[0].sequential_p


def test_holm_correction_stops_a_lucky_treatment_among_several() -> None:
    # b alone would be significant (raw p ≈ 0.03), not after correcting for four treatments.
    data = rates([20_000] * 5, [0.10, 0.1065, 0.10, 0.099, 0.101])
    d = decide(data, FIXED.model_copy(update={"min_uplift": 0.0}), days_in_window=7, days_running=8)
    assert d.comparison is not None
    b = d.comparison.contrasts[0]
    assert b.p_value < 0.05 < b.p_holm
    assert d.verdict == Verdict.CONTINUE


def test_significant_but_too_small_an_uplift_does_not_ship() -> None:
    # +1.5 % on 2 M events per arm: certainly real, certainly under the 3 % bar.
    d = decide(rates([2_000_000, 2_000_000], [0.10, 0.1015]), FIXED, days_in_window=7, days_running=8)
    assert d.comparison is not None and d.comparison.contrasts[0].p_holm < 1e-6
    assert (d.verdict, d.rule) == (Verdict.KILL, Rule.FUTILE)
    assert "no treatment can reach the minimum uplift +3.00%" in d.reason
    assert actions(d) == {"a": ArmAction.INCREASE, "b": ArmAction.STOP}


def test_treatments_that_are_all_worse_are_killed() -> None:
    d = decide(rates([50_000, 50_000, 50_000], [0.10, 0.092, 0.095]), CRITERIA, days_in_window=7, days_running=8)
    assert (d.verdict, d.rule) == (Verdict.KILL, Rule.FUTILE)
    assert d.numbers["best_upper_uplift"] < CRITERIA.min_uplift


def test_inconclusive_at_the_maximum_duration_means_iterate() -> None:
    d = decide(rates([20_000, 20_000], [0.10, 0.102]), CRITERIA, days_in_window=7, days_running=14)
    assert (d.verdict, d.rule) == (Verdict.ITERATE, Rule.OUT_OF_TIME)
    assert actions(d) == {"a": ArmAction.INCREASE, "b": ArmAction.STOP}
    assert "14 days reached the maximum of 14" in d.reason


def test_while_collecting_weights_follow_p_best_and_hopeless_arms_stop() -> None:
    data = rates([20_000, 20_000, 20_000, 20_000], [0.100, 0.104, 0.0915, 0.1005])
    weights = [0.25, 0.25, 0.25, 0.25]
    d = decide(data, CRITERIA, days_in_window=7, days_running=8, current_weights=weights)
    assert (d.verdict, d.rule) == (Verdict.CONTINUE, Rule.COLLECTING)
    acts = actions(d)
    assert acts["c"] == ArmAction.STOP  # -8.5 %: cannot reach +3 %
    assert acts["b"] == ArmAction.INCREASE  # the likely best
    by_name = {a.name: a for a in d.arms}
    for name in ("a", "d"):
        p = by_name[name].p_best
        expected = ArmAction.KEEP if abs(p - 0.25) <= 0.05 else (ArmAction.INCREASE if p > 0.25 else ArmAction.DECREASE)
        assert acts[name] == expected


def test_the_control_is_never_stopped_while_collecting() -> None:
    data = rates([20_000, 20_000], [0.10, 0.1045])
    d = decide(data, CRITERIA.model_copy(update={"stop_p_best": 0.5}), days_in_window=7, days_running=8)
    assert d.verdict == Verdict.CONTINUE
    by_name = {a.name: a for a in d.arms}
    assert by_name["a"].p_best < 0.5 and by_name["a"].action != ArmAction.STOP


def test_a_small_p_best_stops_a_treatment() -> None:
    data = rates([20_000, 20_000, 20_000], [0.10, 0.1045, 0.0995])
    d = decide(data, CRITERIA.model_copy(update={"stop_p_best": 0.05}), days_in_window=7, days_running=8)
    by_name = {a.name: a for a in d.arms}
    assert by_name["c"].p_best < 0.05 and by_name["c"].action == ArmAction.STOP


def test_continuous_rewards_are_judged_with_welch() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.gamma(2.0, 5.0, 30_000), rng.gamma(2.0, 5.6, 30_000)  # means 10 and 11.2
    data = ArmData.continuous([a.size, b.size], [a.sum(), b.sum()], [(a**2).sum(), (b**2).sum()], ["a", "b"])
    d = decide(data, FIXED, days_in_window=7, days_running=8)
    assert (d.verdict, d.winner) == (Verdict.SHIP, "b")
    assert "Welch" in d.reason


def test_bad_inputs_are_refused_with_the_field_named() -> None:
    data = rates([2000, 2000], [0.1, 0.1])
    with pytest.raises(StatsInputError, match=r"days_in_window must be a number of days >= 0, but -1"):
        decide(data, CRITERIA, days_in_window=-1, days_running=1)
    with pytest.raises(StatsInputError, match=r"current_weights must be 2 probabilities"):
        decide(data, CRITERIA, days_in_window=7, days_running=8, current_weights=[0.7, 0.7])
    with pytest.raises(StatsInputError, match=r"control must be an arm index in \[0, 1\], but 5"):
        decide(data, CRITERIA, days_in_window=7, days_running=8, control=5)


# --- adaptive allocation (bandits) -----------------------------------------------------------


def test_a_bandit_reaches_a_verdict_although_the_losers_sit_at_the_floor() -> None:
    """A week's window of a Thompson bandit with a 3 % floor: the losers have 600 events each, far
    from 1,000, so tests against control never conclude; the posterior does."""
    data = rates([600, 600, 19_000, 600], [0.030, 0.028, 0.050, 0.032])
    fixed = decide(data, CRITERIA, days_in_window=7, days_running=14, control=0)
    assert fixed.rule == Rule.OUT_OF_TIME_BEFORE_MINIMUM_DATA  # what a fixed split's rules say
    d = decide(data, CRITERIA, days_in_window=7, days_running=14, control=0, adaptive=True, floor=0.03)
    assert (d.verdict, d.rule, d.winner) == (Verdict.SHIP, Rule.POSTERIOR_WINNER, "c"), d.reason
    assert "P(best)" in d.reason and "expected loss" in d.reason
    assert actions(d) == {"a": ArmAction.STOP, "b": ArmAction.STOP, "c": ArmAction.INCREASE, "d": ArmAction.STOP}


def test_a_bandit_whose_control_is_best_kills_the_candidates() -> None:
    d = decide(rates([19_000, 300, 300], [0.06, 0.03, 0.03]), CRITERIA, days_in_window=7, days_running=10,
               control=0, adaptive=True, floor=0.03)
    assert (d.verdict, d.rule) == (Verdict.KILL, Rule.POSTERIOR_CONTROL), d.reason


def test_a_bandit_keeps_collecting_below_the_minimum_scaled_to_its_floor_or_when_unsure() -> None:
    # K = 4 and a 3 % floor: the losers need 1,000 × 4 × 0.03 = 120 events, the leader 1,000.
    d = decide(rates([100, 300, 5_000, 300], [0.03, 0.03, 0.05, 0.03]), CRITERIA, days_in_window=7,
               days_running=8, adaptive=True, floor=0.03)
    assert d.rule == Rule.MINIMUM_DATA and "a (100 of 120)" in d.reason, d.reason
    close = decide(rates([2_000, 2_000, 2_000], [0.050, 0.051, 0.049]), CRITERIA, days_in_window=7, days_running=8,
                   adaptive=True, floor=0.03)
    assert close.verdict == Verdict.CONTINUE, close.reason
