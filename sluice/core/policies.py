"""Policies: per-arm sufficient statistics → a probability vector over arms.

Each policy is a pure function registered by name with a pydantic model of its
parameters, so an experiment spec can name it and have its parameters checked:

| name | probabilities |
| --- | --- |
| `static` | the A/B weights as given (a mapping arm → weight, or a list in arm order; none = equal) |
| `epsilon_greedy` | ε/K to every arm + (1−ε) split equally among arms tied for the best mean; ε fixed or decaying as ε·d/(d+n) with n observations |
| `thompson` | P(arm is best) under Beta (binary) or Student-t (continuous) posteriors, computed exactly (`sluice.core.thompson`); optionally top-two Thompson |
| `ucb1` | unplayed arms first (split equally), else the arms tied for the highest mean + c·√(ln N / n) |
| `proportional` | a user's reward model, `package.module:function`, returning probabilities or estimates (normalised) |

`policy_probabilities` validates the output of every policy (finite, non-negative, K
long, not all zero) and normalises it; guardrails come after, in `sluice.core.guardrails`.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sluice.core.errors import CoreInputError
from sluice.core.posteriors import BetaPrior, NormalInverseGammaPrior, beta_posterior, student_t_posterior
from sluice.core.sufficient import ArmStatistics
from sluice.core.thompson import beta_best_probabilities, student_t_best_probabilities, top_two_probabilities

RewardType = Literal["binary", "continuous"]


class PolicyConfigError(CoreInputError):
    """A policy name, parameter or output that is not acceptable; the message names it."""


@dataclass(frozen=True)
class PolicyContext:
    """What a policy knows besides the statistics: the arms' names (in order), the reward
    type, and a prior that overrides the policy's own (the pooled prior of an entity: one
    `BetaPrior` per arm, fitted by `pooled_beta_prior` to the other entities' statistics)."""

    arms: tuple[str, ...]
    reward_type: RewardType = "binary"
    prior: BetaPrior | tuple[BetaPrior, ...] | NormalInverseGammaPrior | None = None


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StaticParams(_Params):
    weights: dict[str, float] | list[float] | None = Field(
        None, description="weight per arm (mapping by name, or list in arm order); none = an equal split")


class EpsilonGreedyParams(_Params):
    epsilon: float = Field(0.1, ge=0, le=1, description="exploration share")
    decay_observations: float | None = Field(None, gt=0, description="ε becomes ε·d/(d+n) after n observations")


class ThompsonParams(_Params):
    top_two_beta: float | None = Field(None, ge=0, le=1, description="top-two Thompson: play the leader with this probability")
    prior_alpha: float = Field(1.0, gt=0)
    prior_beta: float = Field(1.0, gt=0)
    prior_mu: float = 0.0
    prior_kappa: float = Field(1e-3, gt=0)
    prior_a: float = Field(1.0, gt=0)
    prior_b: float = Field(1.0, gt=0)
    pooled_prior: bool = Field(False, description="fit a Beta prior to the experiment's other entities (binary rewards)")
    pooled_max_strength: float = Field(100.0, gt=0, description="cap on the pooled prior's α+β")


class UCB1Params(_Params):
    c: float = Field(math.sqrt(2), gt=0, description="exploration constant")


class ProportionalParams(_Params):
    callable: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="package.module:function")
    output: Literal["probabilities", "estimates"] = "estimates"


PolicyFn = Callable[[ArmStatistics, Any, PolicyContext], NDArray[np.float64]]


@dataclass(frozen=True)
class Policy:
    name: str
    params: type[_Params]
    fn: PolicyFn


def _static(stats: ArmStatistics, p: StaticParams, ctx: PolicyContext) -> NDArray[np.float64]:
    if p.weights is None:
        return np.ones(len(ctx.arms))
    if isinstance(p.weights, dict):
        unknown = sorted(set(p.weights) - set(ctx.arms))
        if unknown:
            raise PolicyConfigError(f"policy 'static': weights name unknown arms {unknown}; arms are {list(ctx.arms)}")
        return np.array([p.weights.get(arm, 0.0) for arm in ctx.arms], dtype=np.float64)
    if len(p.weights) != len(ctx.arms):
        raise PolicyConfigError(f"policy 'static': weights has {len(p.weights)} values for {len(ctx.arms)} arms")
    return np.asarray(p.weights, dtype=np.float64)


def _best_mask(estimates: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Arms tied for the highest estimate; unplayed arms (NaN) count as best (optimism)."""
    unplayed = np.isnan(estimates)
    if unplayed.any():
        return unplayed
    return estimates == estimates.max()


def _epsilon_greedy(stats: ArmStatistics, p: EpsilonGreedyParams, ctx: PolicyContext) -> NDArray[np.float64]:
    k = stats.num_arms
    eps = p.epsilon
    if p.decay_observations is not None:
        eps = eps * p.decay_observations / (p.decay_observations + float(stats.count.sum()))
    best = _best_mask(stats.mean)
    return eps / k + (1 - eps) * best / best.sum()


def _thompson(stats: ArmStatistics, p: ThompsonParams, ctx: PolicyContext) -> NDArray[np.float64]:
    if ctx.reward_type == "binary":
        prior = ctx.prior if isinstance(ctx.prior, (BetaPrior, tuple)) else BetaPrior(p.prior_alpha, p.prior_beta)
        post = beta_posterior(stats, prior)
        probs = beta_best_probabilities(post.alpha, post.beta)
    else:
        nig = ctx.prior if isinstance(ctx.prior, NormalInverseGammaPrior) else NormalInverseGammaPrior(p.prior_mu, p.prior_kappa, p.prior_a, p.prior_b)
        t = student_t_posterior(stats, nig)
        probs = student_t_best_probabilities(t.loc, t.scale, t.df)
    return probs if p.top_two_beta is None else top_two_probabilities(probs, p.top_two_beta)


def _ucb1(stats: ArmStatistics, p: UCB1Params, ctx: PolicyContext) -> NDArray[np.float64]:
    n = stats.count
    unplayed = n == 0
    if unplayed.any():
        return unplayed / unplayed.sum()
    bound = stats.mean + p.c * np.sqrt(np.log(n.sum()) / n)
    best = bound == bound.max()
    return best / best.sum()


def _proportional(stats: ArmStatistics, p: ProportionalParams, ctx: PolicyContext) -> NDArray[np.float64]:
    fn = resolve_callable(p.callable)
    try:
        out = fn(stats, ctx.arms)
    except Exception as exc:
        raise PolicyConfigError(f"reward model {p.callable} raised {type(exc).__name__}: {exc}") from exc
    values = _check_vector(out, len(ctx.arms), f"reward model {p.callable}")
    return values


POLICIES: dict[str, Policy] = {
    "static": Policy("static", StaticParams, _static),
    "epsilon_greedy": Policy("epsilon_greedy", EpsilonGreedyParams, _epsilon_greedy),
    "thompson": Policy("thompson", ThompsonParams, _thompson),
    "ucb1": Policy("ucb1", UCB1Params, _ucb1),
    "proportional": Policy("proportional", ProportionalParams, _proportional),
}


def resolve_callable(path: str) -> Callable[..., Any]:
    """Import `package.module:function`; errors name the path and what was missing."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PolicyConfigError(f"reward model {path}: cannot import module {module_name!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise PolicyConfigError(f"reward model {path}: module {module_name!r} has no callable {attr!r}")
    return fn


def validate_policy_params(name: str, params: Mapping[str, Any]) -> None:
    """Raise `PolicyConfigError` naming the policy, field and value if `params` do not fit."""
    _parse(name, params)


def _parse(name: str, params: Mapping[str, Any]) -> tuple[Policy, _Params]:
    policy = POLICIES.get(name)
    if policy is None:
        raise PolicyConfigError(f"unknown policy {name!r}; registered: {', '.join(sorted(POLICIES))}")
    try:
        return policy, policy.params.model_validate(dict(params))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) or "params"
        raise PolicyConfigError(f"policy {name!r}: {field}: {first['msg']} (got {first.get('input')!r})") from None


def _check_vector(values: Any, k: int, who: str) -> NDArray[np.float64]:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PolicyConfigError(f"{who} returned {values!r}, not a vector of numbers") from exc
    if arr.shape != (k,):
        raise PolicyConfigError(f"{who} returned shape {arr.shape}, expected ({k},) (one value per arm)")
    if not np.all(np.isfinite(arr)):
        raise PolicyConfigError(f"{who} returned non-finite values {arr.tolist()}")
    if (arr < 0).any():
        raise PolicyConfigError(f"{who} returned negative values {arr.tolist()}")
    if arr.sum() <= 0:
        raise PolicyConfigError(f"{who} returned all zeros")
    return arr


def policy_probabilities(name: str, params: Mapping[str, Any], stats: ArmStatistics, ctx: PolicyContext) -> NDArray[np.float64]:
    """Probabilities over `ctx.arms` (shape (K,), sum 1) from the named policy."""
    if stats.num_arms != len(ctx.arms):
        raise PolicyConfigError(f"statistics cover {stats.num_arms} arms but the context names {len(ctx.arms)}")
    policy, parsed = _parse(name, params)
    out = _check_vector(policy.fn(stats, parsed, ctx), len(ctx.arms), f"policy {name!r}")
    return out / out.sum()
