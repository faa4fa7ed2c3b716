"""The report draws tables as the worker writes them, including the ones that hold rewards
of serves the worker has not read yet."""

from __future__ import annotations

import numpy as np

from sluice.analytics.report import DAY_MS, EntityData, _plots


def test_a_table_with_more_rewards_than_serves_of_an_arm_still_plots() -> None:
    """Rewards and serves come on two topics, so an early table can count nine clicks of an
    arm whose serves are still on their way (the CI failure of a demo run: Beta(1, -8))."""
    times = np.array([0.0, 1.0, 2.0]) * DAY_MS / 24
    count = np.array([[0.0, 0.0], [40.0, 3.0], [80.0, 60.0]])
    sums = np.array([[2.0, 9.0], [5.0, 9.0], [9.0, 12.0]])
    empty = np.zeros((0, 2))
    d = EntityData("adv-acme", ["a", "b"], times, np.full((3, 2), 0.5), count, sums, sums.copy(), 7.0,
                   {"hours": np.zeros(0), "serves": empty, "count": empty, "sums": empty, "sums_sq": empty},
                   {"weights": empty, "count": empty, "sums": empty, "sums_sq": empty})
    plots = _plots(d, 0.0, binary=True)
    assert {"weights", "reward", "p_best"} <= set(plots)
    assert all(len(png) > 1000 for png in plots.values())
