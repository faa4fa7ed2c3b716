"""Targets of the offline evaluation that depend on what the worker published."""

from __future__ import annotations

import numpy as np

from sluice.analytics.offline import Logged, Policy, build_target


def _log(arms: list[str], rates: dict[str, float], n: int = 4_000) -> Logged:
    """A log of `n` serves split evenly over the arms that have a rate (the others were
    retired before the window: they have no serves)."""
    rng = np.random.default_rng(3)
    served = [arms.index(a) for a in rates]
    action = rng.choice(served, n)
    reward = (rng.random(n) < np.array([rates.get(a, 0.0) for a in arms])[action]).astype(float)
    return Logged(arms, action.astype(np.int64), reward, np.full(n, 1 / len(served)), np.zeros(n, dtype=np.int64))


def test_live_gives_nothing_to_arms_the_worker_holds_at_zero() -> None:
    """A retired arm has no data in the window, so a replayed Thompson keeps it at its prior
    and would hand it most of the traffic; the worker serves it nothing, and so must `live`."""
    arms = ["control", "better", "retired"]
    logged = _log(arms, {"control": 0.02, "better": 0.04})
    thompson = Policy("thompson", {})
    raw = build_target("policy:thompson", logged)
    assert raw[-1, 2, 0] > 0.9  # the prior of the arm without data beats 2-4 % click rates
    live = build_target("live", logged, live=thompson, published={"control": 0.3, "better": 0.7, "retired": 0.0})
    assert np.all(live[:, 2, :] == 0.0)
    np.testing.assert_allclose(live.sum(axis=1), 1.0)
    assert live[-1, 1, 0] > 0.9  # what is left goes where Thompson puts it among the live arms
    unpublished = build_target("live", logged, live=thompson, published={})
    np.testing.assert_array_equal(unpublished, raw)  # nothing published: nothing is known to be held
