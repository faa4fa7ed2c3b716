"""High-precision references for P(arm i is best), for the tests and the benchmark.

Independent of sluice.core.thompson: scipy's adaptive Gauss–Kronrod quadrature (quad_vec,
21 points, subdivided until each interval's error estimate is below 1e-14), CDFs from
scipy's incomplete beta and Student-t functions, normalising constants from mpmath at 40
digits, and a variable in which every integrand is bounded:

- Beta with some α or β < 1 (a density unbounded at 0 or 1): u = log x on (0, ½] and
  v = log(1 − x) on [½, 1), where x^(α−1) dx = e^(αu) du; where x underflows (u < −650),
  I_x(a, b) = x^a (1 − x)^b / (a B(a, b)) to 1e-250.
- Beta with α, β ≥ 1: d = x − c for a short binary fraction c, so that x = c + d and
  1 − x = (1 − c) − d are both exact, and the density is taken around its mode m as
  (α−1) log1p((x−m)/m) + (β−1) log1p((1−x−n)/n) + const: a + b of 1e9 cancel nowhere.
- Student-t: x − (highest loc), split at every arm's quantiles from 1e-15 to 1 − 1e-15.

Accuracy: within 2e-15 of 30-digit mpmath quadrature on the singular cases where both ran
(Jeffreys arms with α or β = 0.5, α or β = 0.01, K = 2 and 3) and of the closed forms in
tests/unit/test_thompson.py; sums of P are 1 to 1e-14. Limits: scipy's betainc is right
to 1e-10 up to α + β ≈ 1e9 but off by 3e-6 at 1e12, so no reference case goes beyond 1e9;
Student-t needs df ≥ 0.1 here (tails beyond 1e300 otherwise). Cost: 0.05–0.5 s for K ≤ 10,
a few seconds for 100 distinct arms (identical arms are integrated once).
"""

from __future__ import annotations

import mpmath as mp
import numpy as np
from scipy import integrate, special


def _distinct(*params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = np.column_stack([np.asarray(p, dtype=float) for p in params])
    distinct, inverse, counts = np.unique(table, axis=0, return_inverse=True, return_counts=True)
    return distinct, inverse.ravel(), counts


def _integrands(log_density: np.ndarray, cdf: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """f_i ∏_{j≠i} F_j^(m_j − [i = j]) for each distinct arm i, at one point."""
    zero = cdf <= 0
    log_cdf = np.log(np.where(zero, 1.0, cdf))
    others_zero = counts @ zero - zero
    return np.where(others_zero > 0, 0.0, np.exp(log_density + counts @ log_cdf - log_cdf))


def _integrate(f, edges: list[float], size: int) -> np.ndarray:
    total = np.zeros(size)
    for a, b in zip(edges[:-1], edges[1:]):
        total += integrate.quad_vec(f, a, b, epsabs=1e-14, epsrel=0, norm="max", limit=5000)[0]
    return total


def _log_beta(a: float, b: float) -> float:
    mp.mp.dps = 40
    return float(mp.log(mp.beta(mp.mpf(a), mp.mpf(b))))


def beta_reference(alpha, beta) -> np.ndarray:
    """P(best) for independent Beta(alpha_i, beta_i) posteriors, α + β ≤ 1e9."""
    distinct, inverse, counts = _distinct(alpha, beta)
    a, b = distinct[:, 0], distinct[:, 1]
    if np.all(a >= 1) and np.all(b >= 1):
        return _beta_bounded(a, b, counts)[inverse]
    return _beta_singular(a, b, counts)[inverse]


def _beta_bounded(a: np.ndarray, b: np.ndarray, counts: np.ndarray) -> np.ndarray:
    mp.mp.dps = 40
    inner_a, inner_b = a > 1, b > 1
    total = np.where(inner_a & inner_b, a + b - 2, 1.0)
    m = np.where(inner_a & inner_b, (a - 1) / total, 1.0)  # the mode, or 1 where a term vanishes
    n = np.where(inner_a & inner_b, (b - 1) / total, 1.0)
    c = round(float(np.median(a / (a + b))) * 2**20) / 2**20
    off_x = np.array([float(mp.mpf(c) - mp.mpf(mi)) for mi in m])  # c − m
    off_y = np.array([float(1 - mp.mpf(c) - mp.mpf(ni)) for ni in n])  # 1 − c − n
    const = np.array([float((ai - 1) * mp.log(mp.mpf(mi)) + (bi - 1) * mp.log(mp.mpf(ni)) - mp.log(mp.beta(mp.mpf(ai), mp.mpf(bi))))
                      for ai, bi, mi, ni in zip(a, b, m, n)])

    def f(d: float) -> np.ndarray:
        x, y = c + d, (1 - c) - d
        if x <= 0 or y <= 0:
            return np.zeros(a.size)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_density = (np.where(inner_a, (a - 1) * np.log1p(np.maximum((off_x + d) / m, -1)), 0.0)
                           + np.where(inner_b, (b - 1) * np.log1p(np.maximum((off_y - d) / n, -1)), 0.0) + const)
        cdf = np.where(x < 0.5, special.betainc(a, b, x), 1 - special.betainc(b, a, y))
        return _integrands(log_density, cdf, counts)

    lo = float(np.min(special.betaincinv(a, b, 1e-18)))
    hi = 1 - float(np.min(special.betaincinv(b, a, 1e-18)))
    points = {lo - c, hi - c}
    for q in [1e-14, 1e-11, 1e-8, 1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99, 1 - 1e-4, 1 - 1e-8, 1 - 1e-12]:
        points.update(float(x - c) for x in special.betaincinv(a, b, q) if lo < x < hi)
    return _integrate(f, sorted(points), a.size)


def _beta_singular(a: np.ndarray, b: np.ndarray, counts: np.ndarray) -> np.ndarray:
    log_beta = np.array([_log_beta(ai, bi) for ai, bi in zip(a, b)])

    def small_cdf(p: np.ndarray, q: np.ndarray, t: float) -> np.ndarray:
        """I_z(p, q) at z = e^t ≤ ½."""
        if t > -650:
            return special.betainc(p, q, np.exp(t))
        return np.exp(p * t + q * np.log1p(-np.exp(t)) - np.log(p) - log_beta)

    def lower(t: float) -> np.ndarray:  # x = e^t: the density in t is x^a (1 − x)^(b−1) / B
        log_density = a * t + (b - 1) * np.log1p(-np.exp(t)) - log_beta
        return _integrands(log_density, small_cdf(a, b, t), counts)

    def upper(t: float) -> np.ndarray:  # 1 − x = e^t
        log_density = b * t + (a - 1) * np.log1p(-np.exp(t)) - log_beta
        return _integrands(log_density, 1.0 - small_cdf(b, a, t), counts)

    half = float(np.log(0.5))
    total = np.zeros(a.size)
    for p, q, f in ((a, b, lower), (b, a, upper)):
        start = -1.0
        while np.max(small_cdf(p, q, start)) > 1e-18:  # below, every arm has < 1e-18
            start *= 1.5
        points = {start, half}
        with np.errstate(all="ignore"):
            for prob in [1e-14, 1e-11, 1e-8, 1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.2, 0.5]:
                x = special.betaincinv(p, q, prob)
                points.update(float(np.log(v)) for v in x[(x > 1e-300) & (x < 0.5)])
        t = half - 1.0
        while t > start:  # lengths growing by 1.5 toward the far tail
            points.add(t)
            t = half - 1.5 * (half - t)
        total += _integrate(f, sorted(v for v in points if start <= v <= half), a.size)
    return total


def student_t_reference(loc, scale, df) -> np.ndarray:
    """P(best) for independent location-scale Student-t posteriors, df ≥ 0.1."""
    distinct, inverse, counts = _distinct(loc, scale, df)
    m, s, nu = distinct[:, 0], distinct[:, 1], distinct[:, 2]
    mp.mp.dps = 40
    lognorm = np.array([float(mp.loggamma((mp.mpf(v) + 1) / 2) - mp.loggamma(mp.mpf(v) / 2) - mp.log(mp.mpf(v) * mp.pi) / 2)
                        for v in nu]) - np.log(s)
    offset = m - np.max(m)

    def f(x: float) -> np.ndarray:
        z = (x - offset) / s
        return _integrands(lognorm - (nu + 1) / 2 * np.log1p(z * z / nu), special.stdtr(nu, z), counts)

    reach = special.stdtrit(nu, 1 - 1e-18)
    lo, hi = float(np.min(offset - reach * s)), float(np.max(offset + reach * s))
    probs = np.array([1e-15, 1e-12, 1e-9, 1e-6, 1e-4, 1e-2, 0.1, 0.3, 0.5])
    probs = np.concatenate([probs, 1 - probs[::-1][1:]])
    points = {lo, hi}
    for mi, si, vi in zip(offset, s, nu):
        points.update(float(mi + si * z) for z in special.stdtrit(vi, probs))
    return _integrate(f, sorted(v for v in points if lo <= v <= hi), m.size)[inverse]
