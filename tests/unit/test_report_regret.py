"""The report's estimated regret compares each day with the arm best on that day."""

from __future__ import annotations

import numpy as np

from sluice.analytics.report import DAY_MS, period_regret

HOUR_MS = 3_600_000


def two_days(share_of_best: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arm 0 converts 10 % and arm 1 5 % on day 0, the other way round on day 1 (the demo's
    change of best arm); 1,000 observations an hour, `share_of_best` of them on the day's
    best arm; rewards at exactly the arms' rates."""
    hours = np.arange(48) * HOUR_MS + 5 * DAY_MS
    rates = np.where(np.arange(48)[:, None] < 24, [0.10, 0.05], [0.05, 0.10])
    best_first = np.arange(48)[:, None] < 24
    share = np.where(best_first, [share_of_best, 1 - share_of_best], [1 - share_of_best, share_of_best])
    count = 1000 * share
    return hours, count, count * rates


def test_a_policy_on_each_day_s_best_arm_pays_only_for_its_exploration() -> None:
    policy, equal = period_regret(*two_days(0.98))
    assert np.isclose(policy[-1], 48 * 1000 * 0.02 * 0.05)  # 2 % on the worse arm, 5 points worse
    assert np.isclose(equal[-1], 48 * 1000 * 0.5 * 0.05)
    # Against the arm best over both days (the two tie) both would have had no regret at all.


def test_an_equal_split_has_the_regret_of_an_equal_split() -> None:
    policy, equal = period_regret(*two_days(0.5))
    assert np.allclose(policy, equal)
    assert np.all(np.diff(policy) > 0)


def test_a_policy_that_keeps_to_yesterday_s_best_arm_pays_for_it_on_the_second_day() -> None:
    hours, _, _ = two_days(0.5)
    count = np.tile([1000.0, 0.0], (48, 1))  # always arm 0, which is best on day 0 only
    count[:, 1] = 10.0  # with a little exploration, so day 1 knows arm 1 is better
    rates = np.where(np.arange(48)[:, None] < 24, [0.10, 0.05], [0.05, 0.10])
    policy, equal = period_regret(hours, count, count * rates)
    day0, day1 = policy[23], policy[-1] - policy[23]
    assert np.isclose(day0, 24 * 10 * 0.05) and np.isclose(day1, 24 * 1000 * 0.05)
    assert equal[-1] > 0


def test_no_hours_no_regret() -> None:
    policy, equal = period_regret(np.zeros(0), np.zeros((0, 2)), np.zeros((0, 2)))
    assert policy.size == equal.size == 0
