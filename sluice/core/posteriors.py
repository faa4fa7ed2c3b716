"""Posteriors of each arm's mean reward from its sufficient statistics, and priors.

- Binary rewards: Beta(α₀ + s, β₀ + n − s), with s successes in n observations.
- Continuous rewards: the Normal–Inverse-Gamma conjugate model (unknown mean and variance).
  Prior NIG(μ₀, κ₀, a₀, b₀); after n observations with mean x̄ and squared deviations SS:
      κ = κ₀ + n,  μ = (κ₀μ₀ + n x̄)/κ,  a = a₀ + n/2,
      b = b₀ + SS/2 + κ₀ n (x̄ − μ₀)² / (2κ)
  and the marginal posterior of the mean is Student-t with 2a degrees of freedom,
  location μ and scale √(b / (a κ)).
- A **pooled prior** across the entities of one experiment (empirical Bayes): for each
  arm, a Beta prior fitted to the other entities' rates of that arm by the method of moments or by maximum likelihood of
  the beta-binomial, its strength α+β capped so it cannot swamp an entity's own data, and
  the flat prior whenever the fit is not trustworthy (too few entities, no spread).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special

from sluice.core.errors import CoreInputError
from sluice.core.sufficient import ArmStatistics


class PriorError(CoreInputError):
    """Prior parameters or entity data that cannot define a prior."""


@dataclass(frozen=True)
class BetaPrior:
    alpha: float = 1.0
    beta: float = 1.0

    def __post_init__(self) -> None:
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise PriorError(f"{name} of a Beta prior must be finite and > 0, but {v!r} is given")

    @property
    def strength(self) -> float:
        return self.alpha + self.beta

    @property
    def mean(self) -> float:
        return self.alpha / self.strength


@dataclass(frozen=True)
class NormalInverseGammaPrior:
    """Weak by default: one pseudo-observation's worth of belief (κ₀ = 1e-3) around 0."""

    mu: float = 0.0
    kappa: float = 1e-3
    a: float = 1.0
    b: float = 1.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.mu):
            raise PriorError(f"mu must be finite, but {self.mu!r} is given")
        for name in ("kappa", "a", "b"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise PriorError(f"{name} of a Normal-Inverse-Gamma prior must be finite and > 0, but {v!r} is given")


@dataclass(frozen=True)
class BetaPosterior:
    alpha: NDArray[np.float64]  # (K,)
    beta: NDArray[np.float64]  # (K,)

    @property
    def mean(self) -> NDArray[np.float64]:
        return self.alpha / (self.alpha + self.beta)


@dataclass(frozen=True)
class StudentTPosterior:
    loc: NDArray[np.float64]  # (K,)
    scale: NDArray[np.float64]  # (K,)
    df: NDArray[np.float64]  # (K,)


def beta_posterior(stats: ArmStatistics, prior: BetaPrior | Sequence[BetaPrior] | None = None) -> BetaPosterior:
    """Beta posterior per arm of a binary reward (total = successes, count = trials).

    `prior` is one prior for every arm, or one per arm (a pooled prior is fitted per arm).
    """
    prior = prior or BetaPrior()
    if isinstance(prior, BetaPrior):
        alpha0, beta0 = np.full(stats.num_arms, prior.alpha), np.full(stats.num_arms, prior.beta)
    else:
        if len(prior) != stats.num_arms:
            raise PriorError(f"{len(prior)} priors given for {stats.num_arms} arms")
        alpha0 = np.array([p.alpha for p in prior])
        beta0 = np.array([p.beta for p in prior])
    successes = np.clip(stats.total, 0, None)
    failures = np.clip(stats.count - stats.total, 0, None)
    return BetaPosterior(alpha0 + successes, beta0 + failures)


def student_t_posterior(stats: ArmStatistics, prior: NormalInverseGammaPrior | None = None) -> StudentTPosterior:
    """Student-t posterior of each arm's mean reward (Normal–Inverse-Gamma model)."""
    prior = prior or NormalInverseGammaPrior()
    n = stats.count
    with np.errstate(invalid="ignore", divide="ignore"):
        xbar = np.where(n > 0, stats.total / n, 0.0)
    ss = np.maximum(stats.total_sq - n * xbar * xbar, 0.0)
    kappa = prior.kappa + n
    mu = (prior.kappa * prior.mu + n * xbar) / kappa
    a = prior.a + n / 2
    b = prior.b + ss / 2 + prior.kappa * n * (xbar - prior.mu) ** 2 / (2 * kappa)
    return StudentTPosterior(loc=mu, scale=np.sqrt(b / (a * kappa)), df=2 * a)


def pooled_beta_prior(
    successes: ArrayLike,
    trials: ArrayLike,
    *,
    method: Literal["moments", "likelihood"] = "moments",
    max_strength: float = 100.0,
    min_entities: int = 3,
    fallback: BetaPrior | None = None,
) -> BetaPrior:
    """A Beta prior fitted to other entities' (successes, trials), shape (E,) each.

    Entities with no trials are ignored. With fewer than `min_entities` left, no spread
    between their rates, or a failed fit, the `fallback` (flat) prior is returned. The
    fitted strength α+β is capped at `max_strength`, keeping its mean.
    """
    fallback = fallback or BetaPrior()
    s = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if s.shape != n.shape or s.ndim != 1:
        raise PriorError(f"successes and trials must be 1-D of one length, got {s.shape} and {n.shape}")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(n))) or (s < 0).any() or (s > n).any():
        raise PriorError("successes must be finite and within [0, trials] for every entity")
    if max_strength <= 0:
        raise PriorError(f"max_strength must be > 0, but {max_strength!r} is given")
    keep = n > 0
    s, n = s[keep], n[keep]
    if s.size < min_entities:
        return fallback
    alpha, beta = _fit_moments(s, n) if method == "moments" else _fit_likelihood(s, n)
    if not (np.isfinite(alpha) and np.isfinite(beta) and alpha > 0 and beta > 0):
        return fallback
    strength = alpha + beta
    if strength > max_strength:
        alpha, beta = alpha * max_strength / strength, beta * max_strength / strength
    return BetaPrior(float(alpha), float(beta))


def _fit_moments(s: NDArray[np.float64], n: NDArray[np.float64]) -> tuple[float, float]:
    """Method of moments for the beta-binomial, rates weighted by trials."""
    rates = s / n
    m = float(np.average(rates, weights=n))
    if not 0 < m < 1:
        return np.nan, np.nan
    # Observed variance of rates minus the binomial noise each entity's rate carries.
    var = float(np.average((rates - m) ** 2, weights=n))
    noise = float(np.mean(m * (1 - m) / n))
    between = var - noise
    if between <= 0:
        return np.nan, np.nan  # no spread beyond noise: the data cannot size the prior
    strength = m * (1 - m) / between - 1
    if strength <= 0:
        return np.nan, np.nan
    return m * strength, (1 - m) * strength


def _fit_likelihood(s: NDArray[np.float64], n: NDArray[np.float64]) -> tuple[float, float]:
    """Maximum likelihood of the beta-binomial over log α, log β, from the moments' start."""

    def neg_log_lik(theta: NDArray[np.float64]) -> float:
        a, b = np.exp(theta)
        return -float(np.sum(special.betaln(s + a, n - s + b) - special.betaln(a, b)))

    start = _fit_moments(s, n)
    if not np.all(np.isfinite(start)):
        m = float(np.clip(s.sum() / n.sum(), 1e-3, 1 - 1e-3))
        start = (m * 10, (1 - m) * 10)
    result = optimize.minimize(neg_log_lik, np.log(start), method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9})
    if not result.success:
        return np.nan, np.nan
    a, b = np.exp(result.x)
    return float(a), float(b)
