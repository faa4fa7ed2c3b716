"""Exact Thompson probabilities against independent computations: a closed form, scipy's
adaptive QUADPACK integration, mpmath, and (for top-two and K = 100) seeded Monte Carlo."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
from scipy import integrate, stats

from sluice.core.thompson import (
    PosteriorInputError,
    beta_best_probabilities,
    student_t_best_probabilities,
    top_two_probabilities,
)


def beta_two_arms_closed_form(a1: int, b1: int, a2: int, b2: int) -> float:
    """P(X2 > X1) for integer Beta parameters (a finite sum; an independent formula)."""
    mp.mp.dps = 40
    total = mp.mpf(0)
    for i in range(a2):
        total += mp.beta(a1 + i, b1 + b2) / ((b2 + i) * mp.beta(1 + i, b2) * mp.beta(a1, b1))
    return float(total)


def quadpack_reference(dists: list) -> np.ndarray:
    """P(best) by scipy's adaptive quadrature, split at every arm's quantiles."""
    k = len(dists)
    out = []
    for i in range(k):
        lo, hi = dists[i].ppf(1e-14), dists[i].isf(1e-14)
        pts = sorted({float(x) for d in dists for x in d.ppf([1e-12, 1e-6, 1e-3, 0.1, 0.5, 0.9, 0.999, 1 - 1e-6, 1 - 1e-12]) if lo < x < hi})
        edges = [lo, *pts, hi]

        def f(x: float, i: int = i) -> float:
            return dists[i].pdf(x) * math.prod(dists[j].cdf(x) for j in range(k) if j != i)

        out.append(sum(integrate.quad(f, a, b, epsabs=1e-14, epsrel=1e-12, limit=200)[0] for a, b in zip(edges[:-1], edges[1:])))
    return np.array(out)


@pytest.mark.parametrize(("a1", "b1", "a2", "b2"), [(3, 5, 4, 4), (20, 80, 25, 75), (1, 1, 2, 1), (150, 850, 160, 840)])
def test_two_beta_arms_match_the_closed_form(a1: int, b1: int, a2: int, b2: int) -> None:
    p = beta_best_probabilities([a1, a2], [b1, b2])
    assert p[1] == pytest.approx(beta_two_arms_closed_form(a1, b1, a2, b2), abs=1e-9)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)


CASES = {
    # 10 million observations each: posteriors a few 1e-4 wide.
    "peaked_1e7": ([0.05e7 + 1, 0.0502e7 + 1, 0.049e7 + 1], [0.95e7 + 1, 0.9498e7 + 1, 0.951e7 + 1]),
    "near_tie": ([5001, 5000.5, 4990], [95001, 95000, 95010]),
    "wide_and_narrow": ([2, 5e5, 40], [3, 5e5, 40]),
    "skewed_tails": ([1, 2, 1], [1000, 1500, 800]),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_beta_probabilities_match_quadpack_within_1e_6(case: str) -> None:
    a, b = CASES[case]
    expected = quadpack_reference([stats.beta(x, y) for x, y in zip(a, b)])
    got = beta_best_probabilities(a, b)
    assert np.abs(got - expected).max() <= 1e-6
    assert got.sum() == pytest.approx(1.0, abs=1e-12)


def test_a_probability_near_1e_8_is_resolved() -> None:
    a, b = [300, 200], [700, 800]  # rates 0.3 vs 0.2: P(second best) is about 1e-8
    expected = quadpack_reference([stats.beta(300, 700), stats.beta(200, 800)])
    got = beta_best_probabilities(a, b)
    assert 1e-10 < expected[1] < 1e-6
    assert abs(got[1] - expected[1]) < 1e-9


def test_student_t_probabilities_match_quadpack() -> None:
    loc, scale, df = [0.0, 0.1, 0.05], [1.0, 0.5, 0.01], [3.0, 10.0, 1000.0]
    expected = quadpack_reference([stats.t(d, m, s) for m, s, d in zip(loc, scale, df)])
    assert np.abs(student_t_best_probabilities(loc, scale, df) - expected).max() <= 1e-6


def test_student_t_against_mpmath_for_two_arms() -> None:
    mp.mp.dps = 25
    (m1, s1, d1), (m2, s2, d2) = (0.0, 1.0, 5.0), (0.3, 0.8, 12.0)

    def cdf(x: mp.mpf, m: float, s: float, d: float) -> mp.mpf:
        z = (x - m) / s
        tail = mp.betainc(d / 2, 0.5, 0, d / (d + z * z), regularized=True) / 2
        return tail if z < 0 else 1 - tail

    def pdf(x: mp.mpf, m: float, s: float, d: float) -> mp.mpf:
        z = (x - m) / s
        return mp.gamma((d + 1) / 2) / (mp.sqrt(d * mp.pi) * mp.gamma(d / 2)) * (1 + z * z / d) ** (-(d + 1) / 2) / s

    p2 = mp.quad(lambda x: pdf(x, m2, s2, d2) * cdf(x, m1, s1, d1), [-mp.inf, -5, -1, 0, 0.3, 1, 5, mp.inf])
    assert student_t_best_probabilities([m1, m2], [s1, s2], [d1, d2])[1] == pytest.approx(float(p2), abs=1e-7)


def test_identical_arms_get_identical_probabilities() -> None:
    a = [30, 50, 30, 50, 30, 45]
    b = [70, 50, 70, 50, 70, 55]
    p = beta_best_probabilities(a, b)
    assert p[0] == p[2] == p[4]
    assert p[1] == p[3]
    assert np.array_equal(beta_best_probabilities([5] * 7, [9] * 7), np.full(7, 1 / 7))


def test_one_hundred_arms_agree_with_monte_carlo() -> None:
    rng = np.random.default_rng(11)
    a, b = rng.uniform(20, 60, 100), rng.uniform(100, 140, 100)
    p = beta_best_probabilities(a, b)
    draws = 200_000
    best = np.argmax(rng.beta(a[:, None], b[:, None], size=(100, draws)), axis=0)
    freq = np.bincount(best, minlength=100) / draws
    tolerance = 5 * np.sqrt(p * (1 - p) / draws) + 1e-5
    assert np.all(np.abs(freq - p) <= tolerance)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)


def test_top_two_matches_a_simulation_of_top_two_sampling() -> None:
    a, b = np.array([30.0, 34.0, 25.0]), np.array([70.0, 66.0, 75.0])
    beta = 0.5
    exact = top_two_probabilities(beta_best_probabilities(a, b), beta)
    rng = np.random.default_rng(5)
    n = 40_000
    first = np.argmax(rng.beta(a[:, None], b[:, None], size=(3, n)), axis=0)
    played = first.copy()
    for t in np.flatnonzero(rng.random(n) >= beta):  # draw again until the argmax differs
        while (j := int(np.argmax(rng.beta(a, b)))) == first[t]:
            pass
        played[t] = j
    freq = np.bincount(played, minlength=3) / n
    assert np.all(np.abs(freq - exact) <= 5 * np.sqrt(exact * (1 - exact) / n))


def test_top_two_gives_a_sure_leader_everything() -> None:
    assert np.array_equal(top_two_probabilities([1.0, 0.0, 0.0], 0.5), [1.0, 0.0, 0.0])


@pytest.mark.parametrize(("alpha", "beta", "message"), [
    ([1, -2], [1, 1], r"alpha\[1\] must be finite and > 0, but -2.0"),
    ([1, 2], [1, float("nan")], r"beta\[1\] must be finite and > 0"),
    ([1, 2, 3], [1, 1], "one length"),
    ([], [], "non-empty"),
])
def test_bad_parameters_are_named(alpha: list, beta: list, message: str) -> None:
    with pytest.raises(PosteriorInputError, match=message):
        beta_best_probabilities(alpha, beta)
