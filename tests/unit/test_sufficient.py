"""Mergeable statistics and the event-time sliding window."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.core.sufficient import DAY_MS, HOUR_MS, ArmStatistics, HourlyStatistics, StatisticsInputError

T0 = 1_763_856_000_000  # a whole hour, epoch ms

events = st.lists(st.tuples(st.integers(0, 2), st.floats(-5, 5, allow_nan=False), st.integers(0, 10 * DAY_MS)), max_size=60)


def state_of(evs: list[tuple[int, float, int]]) -> HourlyStatistics:
    state = HourlyStatistics.of_rewards(3)
    if evs:
        a, r, t = zip(*evs)
        state = state.add_rewards(a, r, np.asarray(t) + T0)
    return state


@settings(max_examples=150, derandomize=True)
@given(events, events)
def test_merging_two_partial_states_equals_processing_all_events_once(left: list, right: list) -> None:
    merged = state_of(left).merge(state_of(right))
    once = state_of(left + right)
    end = T0 + 10 * DAY_MS
    assert set(merged.hours) == set(once.hours)
    for hour in once.hours:
        np.testing.assert_allclose(merged.hours[hour].to_lists(), once.hours[hour].to_lists(), atol=1e-9)
    np.testing.assert_allclose(merged.window(end).to_lists(), once.window(end).to_lists(), atol=1e-9)


def test_the_window_sums_exactly_the_hours_that_overlap_it() -> None:
    state = HourlyStatistics.of_rewards(2)
    # One observation in each of 9 days, 12:00 of each day.
    state = state.add_rewards([0] * 9, [1.0] * 9, [T0 + d * DAY_MS + 12 * HOUR_MS for d in range(9)])
    end = T0 + 8 * DAY_MS + 12 * HOUR_MS  # the 9th observation's time
    # [end − 7 days, end] holds days 1..8 (day 1's hour starts exactly at the window start).
    assert state.window(end).count[0] == 8
    # One millisecond later, day 1's hour [12:00, 13:00) still overlaps the window.
    assert state.window(end + 1).count[0] == 8
    # An hour later it has left the window: the 7-day edge.
    assert state.window(end + HOUR_MS).count[0] == 7
    assert state.window(end, 3 * DAY_MS).count[0] == 4


def test_expiry_keeps_state_bounded_and_the_window_unchanged() -> None:
    state = HourlyStatistics.of_rewards(1).add_rewards([0] * 30, [1.0] * 30, [T0 + d * DAY_MS for d in range(30)])
    end = T0 + 29 * DAY_MS
    pruned = state.expire(end)
    assert len(pruned.hours) == 8
    assert pruned.window(end).to_lists() == state.window(end).to_lists()


def test_statistics_round_trip_through_plain_dicts() -> None:
    state = HourlyStatistics.of_rewards(2).add_rewards([0, 1, 1], [1.0, 0.5, 2.0], [T0, T0, T0 + 5 * HOUR_MS])
    assert HourlyStatistics.from_dict(state.to_dict()).to_dict() == state.to_dict()


def test_mean_and_variance_of_arm_statistics() -> None:
    s = ArmStatistics.from_rewards([0, 0, 0, 1], [1.0, 2.0, 3.0, 5.0], 3)
    np.testing.assert_allclose(s.mean[:2], [2.0, 5.0])
    assert np.isnan(s.mean[2])
    assert s.variance[0] == pytest.approx(1.0)
    assert np.isnan(s.variance[1])


def test_bad_observations_are_named() -> None:
    with pytest.raises(StatisticsInputError, match=r"arm indices must be in \[0, 2\)"):
        ArmStatistics.from_rewards([0, 2], [1.0, 1.0], 2)
    with pytest.raises(StatisticsInputError, match="count must be >= 0"):
        ArmStatistics.of([-1], [0])
