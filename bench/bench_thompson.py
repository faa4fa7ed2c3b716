"""Exact Thompson probabilities against Monte Carlo at 10⁴ and 10⁶ draws: time per call and
the largest absolute error against a reference computed in the same run.

Reference: mpmath (30 digits) for K = 2; scipy's adaptive QUADPACK integration, split at
every arm's quantiles, for K = 10 and 100 (mpmath takes minutes per arm there); the two
agree to ~1e-10 where both run (tests/unit/test_thompson.py).
"""

from __future__ import annotations

import math
import time

import mpmath as mp
import numpy as np
from scipy import integrate, stats

from bench._figures import Figure
from sluice.core.thompson import beta_best_probabilities

SUITE = "thompson"


def _posteriors(k: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(k)
    if kind == "flat":
        return rng.uniform(1, 30, k), rng.uniform(1, 30, k)
    rates = rng.uniform(0.04, 0.05, k)  # 10 million observations per arm
    return rates * 1e7 + 1, (1 - rates) * 1e7 + 1


def _reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    k = a.size
    if k == 2:
        mp.mp.dps = 30
        A, B = [mp.mpf(float(x)) for x in a], [mp.mpf(float(x)) for x in b]
        m = A[1] / (A[1] + B[1])
        s = mp.sqrt(A[1] * B[1] / ((A[1] + B[1]) ** 2 * (A[1] + B[1] + 1)))
        pts = sorted({mp.mpf(0), mp.mpf(1), *[min(max(m + z * s, mp.mpf(0)), mp.mpf(1)) for z in range(-14, 15, 2)]})
        p1 = mp.quad(lambda x: x ** (A[1] - 1) * (1 - x) ** (B[1] - 1) / mp.beta(A[1], B[1]) * mp.betainc(A[0], B[0], 0, x, regularized=True), pts)
        return np.array([1 - float(p1), float(p1)])
    dists = [stats.beta(x, y) for x, y in zip(a, b)]
    ppf = np.array([d.ppf([1e-12, 1e-6, 1e-3, 0.1, 0.5, 0.9, 0.999, 1 - 1e-6, 1 - 1e-12]) for d in dists])
    out = []
    for i in range(k):
        lo, hi = dists[i].ppf(1e-14), dists[i].isf(1e-14)
        pts = sorted({float(x) for x in ppf.ravel() if lo < x < hi})
        edges = [lo, *pts, hi]

        def f(x: float, i: int = i) -> float:
            return dists[i].pdf(x) * math.prod(dists[j].cdf(x) for j in range(k) if j != i)

        out.append(sum(integrate.quad(f, u, v, epsabs=1e-13, limit=200)[0] for u, v in zip(edges[:-1], edges[1:])))
    return np.array(out)


def _monte_carlo(a: np.ndarray, b: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    counts = np.zeros(a.size)
    chunk = max(1, min(draws, 2_000_000 // a.size))
    done = 0
    while done < draws:
        n = min(chunk, draws - done)
        counts += np.bincount(np.argmax(rng.beta(a[:, None], b[:, None], size=(a.size, n)), axis=0), minlength=a.size)
        done += n
    return counts / draws


def _time(fn, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def run(quick: bool) -> list[Figure]:
    figures: list[Figure] = []
    rng = np.random.default_rng(0)
    sizes = (2, 10) if quick else (2, 10, 100)
    for k in sizes:
        for kind in ("flat", "peaked"):
            if quick and kind == "peaked" and k == 2:
                continue  # the mpmath reference of a peaked pair takes a while
            a, b = _posteriors(k, kind)
            exact = beta_best_probabilities(a, b)
            # The QUADPACK reference of 100 arms takes many minutes; K=100 is timed only (its
            # accuracy is that of K=10: the same grid per arm).
            ref = _reference(a, b) if k < 100 else exact
            exact_s = _time(lambda: beta_best_probabilities(a, b), 20)
            goal_ms = {2: None, 10: 1.0, 100: 10.0}[k]
            mc_err = {}
            for draws in (10_000, 1_000_000):
                started = time.perf_counter()
                p = _monte_carlo(a, b, draws, rng)
                mc_err[draws] = (time.perf_counter() - started, float(np.abs(p - ref).max()))
            name = f"K={k} {kind}"
            figures.append(Figure(SUITE, f"{name}: exact time per call", exact_s * 1e3, "ms", "lower",
                                  "Monte Carlo 10^6 draws", mc_err[1_000_000][0] * 1e3, goal=goal_ms,
                                  note=f"MC 10^4 draws: {mc_err[10_000][0] * 1e3:.1f} ms"))
            if k == 100:
                continue
            figures.append(Figure(SUITE, f"{name}: exact max abs error", float(np.abs(exact - ref).max()), "", "lower",
                                  "Monte Carlo 10^6 draws", mc_err[1_000_000][1], goal=1e-6,
                                  note=f"MC 10^4 draws: {mc_err[10_000][1]:.1e}; reference {'mpmath' if k == 2 else 'QUADPACK'}"))
    return figures
