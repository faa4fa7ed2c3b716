"""Health e-detectors: false alarms at most α under continuous monitoring, quick detection
of a failure that starts late, and the arithmetic of the SRM e-process. Every simulation is
seeded, and every bound asserted holds with overwhelming probability (stated per test)."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.core.health import (
    HealthInputError,
    bernoulli_excess,
    e_detector,
    mean_drop,
    no_rewards_probability,
    srm_increment,
    srm_ratio,
    start_log_weights,
)


def test_start_weights_sum_to_one_and_nothing_started_gives_one() -> None:
    assert np.exp(start_log_weights(0, 24 * 100_000)).sum() == pytest.approx(1.0, abs=2e-5)
    assert e_detector([0.0] * 50, 0, 0.05).log_e == pytest.approx(0.0, abs=1e-12)  # every E = 1: M = 1
    assert e_detector([0.0] * 10, 30, 0.05).log_e < 0  # starts before the window were dropped


def first_alarm(rates: np.ndarray, threshold: float, alpha: float, per_hour: int, rng: np.random.Generator) -> int | None:
    """Hourly looks at an arm with the given true rate per hour; the hour of the first alarm."""
    trials = np.full(rates.size, per_hour, dtype=np.float64)
    events = rng.binomial(per_hour, rates).astype(np.float64)
    for hour in range(rates.size):
        if bernoulli_excess(trials[:hour + 1], events[:hour + 1], threshold, 0, alpha).breached:
            return hour
    return None


def test_a_healthy_arm_at_the_threshold_alarms_less_often_than_alpha_over_its_whole_life() -> None:
    """100 arms at exactly the threshold (the hardest healthy case), looked at every hour for
    a week. Alarms are at most α = 10 % in expectation; seeing more than 10 of 100 would need
    the true share near the bound and chance on top (the detector's real rate is far below α:
    the end-to-end A/A simulation reports it)."""
    rng = np.random.default_rng(1)
    alarms = sum(first_alarm(np.full(168, 0.01), 0.01, 0.10, 200, rng) is not None for _ in range(100))
    assert alarms <= 10, alarms


def test_a_failure_that_starts_on_day_three_is_found_within_hours() -> None:
    """0.5 % errors for 72 hours, then 8 %: with 200 requests an hour the 8 % arm gives ~16
    errors an hour against 2 expected at the threshold: the evidence passes 1/(α·π) within a
    few hours (a chance of missing it for 12 hours is below 1e-6 at these counts)."""
    rng = np.random.default_rng(2)
    rates = np.r_[np.full(72, 0.005), np.full(72, 0.08)]
    hour = first_alarm(rates, 0.01, 0.01, 200, rng)
    assert hour is not None and 72 <= hour <= 84, hour


def test_the_detector_is_not_slowed_by_the_healthy_past() -> None:
    """A cumulative e-process from the start carries 72 healthy hours of evidence *for* the
    null and needs longer than the detector, which restarts every hour."""
    rng = np.random.default_rng(3)
    n = np.full(144, 200.0)
    k = np.r_[rng.binomial(200, 0.005, 72), rng.binomial(200, 0.03, 72)].astype(float)
    detector = next(h for h in range(144) if bernoulli_excess(n[:h + 1], k[:h + 1], 0.01, 0, 0.01).breached)
    cumulative = next((h for h in range(144) if bernoulli_excess([n[:h + 1].sum()], [k[:h + 1].sum()], 0.01, 0,
                                                                 0.01).breached), 10_000)
    assert detector < cumulative


def test_mean_drop_finds_a_drop_and_keeps_quiet_without_one() -> None:
    rng = np.random.default_rng(4)

    def look(arm_rate: float, hours: int = 96, per_hour: int = 400) -> bool:
        ref = rng.binomial(1, 0.05, (hours, per_hour)).astype(float)
        arm = rng.binomial(1, arm_rate, (hours, per_hour)).astype(float)
        for h in range(1, hours + 1):
            # per start s ≤ h: hours s..h of both arms
            na = np.arange(h, 0, -1) * per_hour.__float__()
            sa = np.cumsum(arm[:h].sum(1)[::-1])[::-1]
            sr = np.cumsum(ref[:h].sum(1)[::-1])[::-1]
            if mean_drop(na, sa, sa, na, sr, sr, 0.05, 0, 0.01).breached:
                arm_mean, ref_mean = arm[:h].mean(), ref[:h].mean()
                return bool(arm_mean < 0.95 * ref_mean)
        return False

    assert look(0.03)  # 40 % below: found (per hour 400 serves; z > 8 by the end, a miss below 1e-9)
    assert sum(look(0.05, hours=48) for _ in range(20)) <= 2  # equal arms: at most α·20 ≈ 0.2 expected


def test_srm_increment_is_the_log_likelihood_ratio_of_the_plug_in() -> None:
    w = np.array([[0.5, 0.5], [0.2, 0.8]])
    r = np.array([0.9, 1.1])
    observed, versions = np.array([3, 4]), np.array([3, 4])  # 3 serves under v0, 4 under v1
    # Brute force: serves (v0: a0, a0, a1) (v1: a0, a1, a1, a1)
    serves = [(0, 0), (0, 0), (0, 1), (1, 0), (1, 1), (1, 1), (1, 1)]
    brute = sum(np.log(w[v, a] * r[a] / (w[v] @ r)) - np.log(w[v, a]) for v, a in serves)
    assert srm_increment(observed, w, versions, r) == pytest.approx(brute, abs=1e-12)


def test_srm_detects_dropped_serves_under_moving_weights_and_not_without() -> None:
    """Weights change every batch (a bandit); one arm loses 3 % of its serves. Batches of
    2,000 serves: the e-process passes 1/α after some tens of batches; without the loss it
    stays below (its expectation stays 1: an alarm has probability ≤ α = 0.001)."""
    rng = np.random.default_rng(5)

    def run(loss: float, batches: int = 150) -> float:
        log_e, obs, exp = 0.0, np.zeros(3), np.zeros(3)
        for _ in range(batches):
            w = rng.dirichlet([5, 5, 5])[None, :]
            arms = rng.choice(3, size=2_000, p=w[0])
            kept = arms[~((arms == 0) & (rng.random(arms.size) < loss))]
            o = np.bincount(kept, minlength=3).astype(float)
            log_e += srm_increment(o, w, [kept.size], srm_ratio(obs, exp))
            obs += o
            exp += kept.size * w[0]
        return log_e

    assert run(0.03) > np.log(1 / 0.001)
    assert run(0.0) < np.log(1 / 0.001)


def test_quiet_rewards_and_bad_inputs() -> None:
    assert no_rewards_probability(2_000, 0.02) < 1e-8
    assert no_rewards_probability(10, 0.02) > 0.5
    with pytest.raises(HealthInputError, match="threshold"):
        bernoulli_excess([1], [0], 1.5, 0, 0.05)
    with pytest.raises(HealthInputError, match="outnumber"):
        bernoulli_excess([1], [2], 0.1, 0, 0.05)
    with pytest.raises(HealthInputError, match="alpha"):
        e_detector([0.0], 0, 0.0)
