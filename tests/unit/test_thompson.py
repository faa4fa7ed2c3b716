"""Exact Thompson probabilities against independent computations, to the 1e-9 goal.

The references, and why they can judge 1e-9:
- closed forms, exact: P(X2 > X1) for an integer α2 (a finite sum, mpmath at 40 digits);
  Beta(α_j, 1) arms, P_i = α_i / Σ α_j for any K; Beta(1, β_j) arms, where −log(1 − X_j)
  is exponential with rate β_j, so P_i is an integral of elementary functions, taken by
  adaptive Gauss–Kronrod quadrature to 1e-14;
- tests/thompson_reference.py everywhere else: adaptive Gauss–Kronrod quadrature (scipy)
  in variables where every integrand is bounded, within 2e-15 of 30-digit mpmath where both
  ran (see its docstring);
- seeded Monte Carlo for what the numbers mean (K = 100, top-two sampling).

Singular ends (a Beta density unbounded at 0 when α < 1, at 1 when β < 1) are tested on
their own, one end, the other and both, down to 0.01, with K = 2, 10 and 100.
"""

from __future__ import annotations

import mpmath as mp
import numpy as np
import pytest
from scipy import integrate

from sluice.core.thompson import (
    PosteriorInputError,
    beta_best_probabilities,
    student_t_best_probabilities,
    top_two_probabilities,
)
from tests.thompson_reference import beta_reference, student_t_reference

GOAL = 1e-9  # largest absolute error of any P(best)


def beta_two_arms_closed_form(a1: float, b1: float, a2: int, b2: float) -> float:
    """P(X2 > X1) for an integer a2 (a finite sum; a1, b1, b2 any positive reals)."""
    mp.mp.dps = 40
    total = mp.mpf(0)
    for i in range(a2):
        total += mp.beta(a1 + i, b1 + b2) / ((b2 + i) * mp.beta(1 + i, b2) * mp.beta(a1, b1))
    return float(total)


def exponential_race(rate: np.ndarray) -> np.ndarray:
    """P(Y_i is the largest) for independent Y_j ~ Exp(rate_j):
    ∫ rate_i e^(−rate_i t) ∏_{j≠i} (1 − e^(−rate_j t)) dt, by adaptive quadrature to 1e-14."""
    def f(t: float) -> np.ndarray:
        log_cdf = np.log(-np.expm1(-rate * t))
        return rate * np.exp(-rate * t + log_cdf.sum() - log_cdf)

    edges = np.unique(np.concatenate([[0.0], np.outer([0.01, 0.1, 0.5, 1, 2, 5, 10, 20, 45], 1 / rate).ravel()]))
    return sum(integrate.quad_vec(f, a, b, epsabs=1e-15, epsrel=0, norm="max", limit=2000)[0] for a, b in zip(edges[:-1], edges[1:]))


def assert_within_goal(got: np.ndarray, expected: np.ndarray) -> None:
    assert np.abs(got - expected).max() <= GOAL, f"largest error {np.abs(got - expected).max():.2e}"
    assert got.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("a1", "b1", "a2", "b2"), [
    (3, 5, 4, 4), (20, 80, 25, 75), (1, 1, 2, 1), (150, 850, 160, 840),
    (0.5, 1, 1, 1),  # issue 16's example: a density unbounded at 0 against a uniform one
    (0.5, 0.5, 1, 0.5),  # both ends of the first unbounded, the upper end of the second
    (0.5, 3.5, 3, 0.5),
    (0.01, 1, 1, 0.01),
    (0.01, 0.01, 2, 0.01),
])
def test_two_beta_arms_match_the_closed_form(a1: float, b1: float, a2: int, b2: float) -> None:
    p = beta_best_probabilities([a1, a2], [b1, b2])
    expected = beta_two_arms_closed_form(a1, b1, a2, b2)
    assert_within_goal(p, np.array([1 - expected, expected]))


@pytest.mark.parametrize("k", [2, 10, 100])
def test_densities_unbounded_at_zero_match_the_closed_form(k: int) -> None:
    # Beta(α, 1) has CDF x^α: P(X_i is largest) = α_i / Σ α_j.
    alpha = np.random.default_rng(k).uniform(0.01, 1.0, k)
    alpha[0], alpha[-1] = 0.01, 0.5
    if k > 2:
        alpha[1], alpha[2] = 0.01, 2.5  # an identical pair and a bounded arm among them
    assert_within_goal(beta_best_probabilities(alpha, np.ones(k)), alpha / alpha.sum())


@pytest.mark.parametrize("k", [2, 10, 100])
def test_densities_unbounded_at_one_match_the_exponential_race(k: int) -> None:
    # Beta(1, β) is 1 − Beta(β, 1): −log(1 − X) ~ Exp(β), and the largest X has the largest −log(1 − X).
    beta = np.random.default_rng(100 + k).uniform(0.01, 1.0, k)
    beta[0], beta[-1] = 0.01, 0.5
    if k > 2:
        beta[1], beta[2] = 0.03, 4.0
    assert_within_goal(beta_best_probabilities(np.ones(k), beta), exponential_race(beta))


def _seeded(k: int, seed: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "jeffreys, no failures":
        return 0.5 + rng.integers(0, 6, k), np.full(k, 0.5)
    if kind == "jeffreys, few data":
        return 0.5 + rng.integers(0, 4, k), 0.5 + rng.integers(0, 4, k) * rng.integers(0, 2, k)
    # α and β down to 0.01, both ends unbounded in some arms
    return rng.choice([0.01, 0.05, 0.5, 1.01, 3.0], k), rng.choice([0.01, 0.2, 0.5, 1.5, 10.0], k)


SINGULAR = {
    "jeffreys K=2": ([0.5, 0.5], [0.5, 3.5]),
    "jeffreys K=3": ([0.5, 0.5, 2.5], [3.5, 0.5, 1.5]),
    "tiny K=2": ([0.01, 0.02], [0.01, 0.5]),
    "jeffreys, no failures K=10": _seeded(10, 1, "jeffreys, no failures"),
    "tiny K=10": _seeded(10, 2, "tiny"),
    "jeffreys, few data K=100": _seeded(100, 3, "jeffreys, few data"),
    "tiny K=100": _seeded(100, 4, "tiny"),
    "tiny against peaked": ([0.01, 500, 0.5], [0.01, 500, 3]),
}


@pytest.mark.parametrize("case", SINGULAR, ids=list(SINGULAR))
def test_unbounded_densities_match_the_reference(case: str) -> None:
    a, b = SINGULAR[case]
    assert_within_goal(beta_best_probabilities(a, b), beta_reference(a, b))


BOUNDED = {
    # 10 million observations each: posteriors a few 1e-4 wide.
    "peaked_1e7": ([0.05e7 + 1, 0.0502e7 + 1, 0.049e7 + 1], [0.95e7 + 1, 0.9498e7 + 1, 0.951e7 + 1]),
    # a billion: scipy's betaln alone is off by 2e-5 here
    "peaked_1e9": ([1e8 + 1, 1.00003e8 + 1], [9e8 + 1, 9e8 + 1]),
    "near_tie": ([5001, 5000.5, 4990], [95001, 95000, 95010]),
    "wide_and_narrow": ([2, 5e5, 40], [3, 5e5, 40]),
    "skewed_tails": ([1, 2, 1], [1000, 1500, 800]),
    "flat K=10": tuple(np.random.default_rng(10).uniform(1, 30, (2, 10))),
}


@pytest.mark.parametrize("case", BOUNDED, ids=list(BOUNDED))
def test_beta_probabilities_match_the_reference(case: str) -> None:
    a, b = BOUNDED[case]
    assert_within_goal(beta_best_probabilities(a, b), beta_reference(a, b))


def test_a_probability_near_1e_8_is_resolved() -> None:
    a, b = [300, 200], [700, 800]  # rates 0.3 vs 0.2: P(second best) is about 1e-8
    expected = beta_reference(a, b)
    assert 1e-10 < expected[1] < 1e-6
    assert abs(beta_best_probabilities(a, b)[1] - expected[1]) < 1e-12


STUDENT_T = {
    "three": ([0.0, 0.1, 0.05], [1.0, 0.5, 0.01], [3.0, 10.0, 1000.0]),
    "cauchy, narrow and wide": ([0.0, 3.0], [10.0, 0.01], [1.0, 1.0]),
    "df 0.1 to 0.5": ([0.0, 0.5, 1.0], [1.0, 1.0, 2.0], [0.5, 0.1, 0.3]),
    "df 1e9": ([0.0, 1e-4], [1e-4, 1.2e-4], [1e9, 1e9]),
    "heavy K=10": tuple(np.random.default_rng(5).uniform([-1, 0.5, 0.5], [1, 2, 3], (10, 3)).T),
    # 10 distinct arms, each 10 times (the reference takes seconds for 100 distinct ones)
    "K=100": tuple(np.repeat(np.random.default_rng(6).uniform([-0.1, 0.05, 1], [0.1, 0.2, 50], (10, 3)), 10, axis=0).T),
}


@pytest.mark.parametrize("case", STUDENT_T, ids=list(STUDENT_T))
def test_student_t_probabilities_match_the_reference(case: str) -> None:
    loc, scale, df = STUDENT_T[case]
    assert_within_goal(student_t_best_probabilities(loc, scale, df), student_t_reference(loc, scale, df))


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
    assert student_t_best_probabilities([m1, m2], [s1, s2], [d1, d2])[1] == pytest.approx(float(p2), abs=GOAL)


def test_posteriors_narrower_than_doubles_resolve_are_point_masses() -> None:
    # Beta(1e-300, 1) against a uniform arm: α / Σ α, with α 300 orders of magnitude apart
    assert beta_best_probabilities([1e-300, 1.0], [1.0, 1.0]) == pytest.approx([1e-300, 1.0], rel=1e-9, abs=0)
    # a t arm 1e-14 wide (as a point) below a Cauchy one: P(Cauchy < −1) = 1/4
    p = student_t_best_probabilities([-1.0, 0.0], [1e-14, 1.0], [30.0, 1.0])
    assert p[0] == pytest.approx(0.25, abs=GOAL)


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
