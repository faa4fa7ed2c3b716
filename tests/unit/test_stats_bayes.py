"""Expected loss and P(beat control) against seeded Monte Carlo (tolerance from the MC
standard error), plus exact values where they are known."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.core.stats.checks import StatsInputError
from sluice.core.stats.bayes import (
    bayesian_binary,
    bayesian_continuous,
    beta_beat_control,
    beta_expected_loss,
    mean_posteriors,
    student_t_beat_control,
    student_t_expected_loss,
)

DRAWS = 400_000


def mc_loss(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    loss = draws.max(axis=1, keepdims=True) - draws
    return loss.mean(axis=0), loss.std(axis=0, ddof=1) / np.sqrt(draws.shape[0])


@pytest.mark.parametrize(
    ("alpha", "beta"),
    [
        ([101, 121, 111], [901, 881, 891]),  # three close rates
        ([3, 5], [9, 4]),  # small samples, skewed posteriors
        ([1001, 1060, 980, 1030], [9001, 8942, 9021, 8972]),
    ],
)
def test_beta_expected_loss_and_beat_control_match_monte_carlo(alpha: list[float], beta: list[float]) -> None:
    rng = np.random.default_rng(17)
    a, b = np.array(alpha, float), np.array(beta, float)
    draws = rng.beta(a, b, size=(DRAWS, a.size))
    mean, se = mc_loss(draws)
    np.testing.assert_array_less(np.abs(beta_expected_loss(a, b) - mean), 4 * se + 1e-9)
    beats = (draws[:, 1:] > draws[:, :1]).mean(axis=0)
    beats_se = np.sqrt(beats * (1 - beats) / DRAWS)
    ours = beta_beat_control(a, b, control=0)
    assert np.isnan(ours[0])
    np.testing.assert_array_less(np.abs(ours[1:] - beats), 4 * beats_se + 1e-9)


@pytest.mark.parametrize(
    ("loc", "scale", "df"),
    [([5.0, 5.2, 4.9], [0.1, 0.12, 0.3], [50, 30, 12]), ([100.0, 101.0], [2.0, 0.5], [999, 15])],
)
def test_student_t_expected_loss_and_beat_control_match_monte_carlo(loc: list, scale: list, df: list) -> None:
    rng = np.random.default_rng(23)
    m, s, v = (np.array(x, float) for x in (loc, scale, df))
    draws = m + s * rng.standard_t(v, size=(DRAWS, m.size))
    mean, se = mc_loss(draws)
    np.testing.assert_array_less(np.abs(student_t_expected_loss(m, s, v) - mean), 4 * se)
    beats = (draws[:, 1:] > draws[:, :1]).mean(axis=0)
    np.testing.assert_array_less(
        np.abs(student_t_beat_control(m, s, v)[1:] - beats), 4 * np.sqrt(beats * (1 - beats) / DRAWS) + 1e-9
    )


def test_expected_loss_exact_cases() -> None:
    # Two identical Beta(2, 2): E[max - θ] = E|X - Y| / 2 = (9/35) / 2.
    np.testing.assert_allclose(beta_expected_loss([2, 2], [2, 2]), [9 / 70, 9 / 70], rtol=1e-9)
    # Two normal-like posteriors (df huge): E[(Y - X)+] = σ φ(μ/σ) + μ Φ(μ/σ), σ² = 2 s².
    from scipy import stats as sps

    mu, sd = 0.3, np.sqrt(2.0) * 0.2
    gap = sd * sps.norm.pdf(mu / sd) + mu * sps.norm.cdf(mu / sd)
    ours = student_t_expected_loss([1.0, 1.3], [0.2, 0.2], [1e9, 1e9])
    np.testing.assert_allclose(ours, [gap, gap - mu], rtol=1e-7)


def test_peaked_posteriors_from_ten_million_events() -> None:
    # 10 % vs 10.01 % on 10⁷ events each: the loss is tiny but must not vanish or go negative.
    a = np.array([1e6, 1.001e6]) + 1
    b = 1e7 - a + 2
    loss = beta_expected_loss(a, b)
    rng = np.random.default_rng(5)
    mean, se = mc_loss(rng.beta(a, b, size=(DRAWS, 2)))
    np.testing.assert_array_less(np.abs(loss - mean), 4 * se + 1e-12)
    assert loss[1] < loss[0]


def test_summaries_for_binary_and_continuous_arms() -> None:
    binary = bayesian_binary([100, 130, 90], [1000, 1000, 1000], control=0)
    assert binary.p_best.sum() == pytest.approx(1.0)
    assert np.argmax(binary.p_best) == 1
    assert binary.p_beat_control[1] > 0.9 > binary.p_beat_control[2]
    assert np.argmin(binary.expected_loss) == 1

    rng = np.random.default_rng(2)
    arms = [rng.normal(10, 3, 400), rng.normal(10.6, 3, 400)]
    n = [len(x) for x in arms]
    cont = bayesian_continuous(n, [x.sum() for x in arms], [(x**2).sum() for x in arms], control=0)
    loc, scale, df = mean_posteriors(n, [x.sum() for x in arms], [(x**2).sum() for x in arms])
    np.testing.assert_allclose(loc, [x.mean() for x in arms])
    np.testing.assert_allclose(scale, [x.std(ddof=1) / np.sqrt(400) for x in arms])
    assert cont.p_beat_control[1] > 0.95


def test_bad_posteriors_are_refused() -> None:
    with pytest.raises(StatsInputError, match=r"df must be > 1"):
        student_t_expected_loss([0, 1], [1, 1], [1, 5])
    with pytest.raises(StatsInputError, match=r"control must be an arm index in \[0, 1\], but 2"):
        beta_beat_control([1, 2], [3, 4], control=2)
    with pytest.raises(StatsInputError, match=r"n must be >= 3 in every arm"):
        mean_posteriors([2, 5], [1, 2], [1, 2])
