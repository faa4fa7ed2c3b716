"""Off-policy evaluation: what a target policy would have earned, estimated from a log of
serves drawn by another (logging) policy with known propensities.

Conventions are Open Bandit Pipeline's (OBP, `obp.ope`), so numbers can be compared with
it: a log of `n_rounds` rounds, each one action shown at one slot (`position`) of a list of
`len_list` slots, chosen by the logging policy from `n_actions` actions.

| array | shape | meaning |
| --- | --- | --- |
| `action` | (n_rounds,) | the logged action a_i, an integer in [0, n_actions) |
| `reward` | (n_rounds,) | its observed reward r_i |
| `pscore` | (n_rounds,) | π_b(a_i | x_i, p_i): the logging policy's probability of a_i at its position, in (0, 1] |
| `position` | (n_rounds,) | the slot p_i in [0, len_list); all 0 with one slot |
| `action_dist` | (n_rounds, n_actions, len_list) | the target π_e(a | x_i, l); sums to 1 over actions at every (round, slot) |
| `estimated_rewards` | (n_rounds, n_actions, len_list) | a reward model's q̂(x_i, a, l) (OBP's `estimated_rewards_by_reg_model`) |

With w_i = π_e(a_i | x_i, p_i) / pscore_i, q̂_i = q̂(x_i, a_i, p_i) and
q̂_i(π_e) = Σ_a π_e(a | x_i, p_i) q̂(x_i, a, p_i) / Σ_a π_e(a | x_i, p_i), the estimators
(each a frozen dataclass sharing the `Estimator` protocol) are, as in OBP 0.5:

| estimator | per-round value u_i, weight v_i | estimate Σu / Σv |
| --- | --- | --- |
| `IPS(clip)` | min(w_i, clip)·r_i, 1 | inverse propensity scoring (Strehl et al. 2010) |
| `SNIPS()` | w_i·r_i, w_i | self-normalised IPS (Swaminathan & Joachims 2015) |
| `DM()` | q̂_i(π_e), 1 | direct method |
| `DR(clip)` | q̂_i(π_e) + min(w_i, clip)·(r_i − q̂_i), 1 | doubly robust (Dudík et al. 2014) |
| `SwitchDR(threshold)` | q̂_i(π_e) + 1{w_i ≤ threshold}·w_i·(r_i − q̂_i), 1 | switch-DR (Wang et al. 2017) |
| `Replay("uniform")` | π_e(a_i)·r_i, π_e(a_i) | replay (Li et al. 2011), for uniform logs |
| `Replay("propensity")` | w_i·r_i, w_i | replay with propensity weights, for any log |

Switch-DR rather than DR with optimistic shrinkage: its one parameter is a bound on the
importance weight, read against the diagnostics' largest weight, and above it the
estimate is exactly DM's, so a reader knows which rounds the reward model speaks for.

`EstimatorResult.round_rewards` are OBP's per-round estimated rewards u_i / mean(v), whose
mean is the estimate; the intervals come from the same u and v. `evaluate` runs several
estimators over one log and target, validating and computing the shared parts once, with
one bootstrap whose resamples all estimators share.

Targets are built by `always_arm_action_dist`, `static_split_action_dist` (also the last
published weights), `action_dist_from_probabilities` (a .npy file's array) and, for the
policies Sluice runs, `replayed_policy_action_dist` and `current_policy_action_dist`. The
reward model is `fit_reward_model` (cross-fitted cell means plus a ridge regression on
context). Pure: numbers in, numbers out; randomness only from the seed or Generator passed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as sps

from sluice.core.errors import CoreInputError
from sluice.core.policies import PolicyContext, RewardType, policy_probabilities
from sluice.core.posteriors import BetaPrior, NormalInverseGammaPrior
from sluice.core.sufficient import ArmStatistics

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

# Sums of a distribution over actions must be 1 within this (OBP's np.allclose tolerance).
_SUM_TOLERANCE = 1e-5
# Rows handled at once where an (n_rounds, n_actions) slice would otherwise be copied whole.
_ROW_CHUNK = 32_768


class OPEInputError(CoreInputError):
    """Logs, targets, reward predictions or settings an estimator cannot work with; the
    message names the field, the value and what was expected."""


# ---------------------------------------------------------------------------------------
# The log


@dataclass(frozen=True)
class BanditLog:
    """A validated log of `n_rounds` rounds (shapes in the module's table).

    `context`: optional features per round, shape (n_rounds, n_features), used only by
    `fit_reward_model`. Build it with `BanditLog.of(...)`, which converts and checks every
    array and raises `OPEInputError` naming the field.
    """

    action: IntArray
    reward: FloatArray
    pscore: FloatArray
    position: IntArray
    n_actions: int
    len_list: int
    context: FloatArray | None = None

    @classmethod
    def of(
        cls,
        action: ArrayLike,
        reward: ArrayLike,
        pscore: ArrayLike,
        n_actions: int,
        position: ArrayLike | None = None,
        len_list: int | None = None,
        context: ArrayLike | None = None,
    ) -> BanditLog:
        """Check and convert. `position` None means one slot (all 0); `len_list` None means
        max(position) + 1."""
        if isinstance(n_actions, bool) or not isinstance(n_actions, (int, np.integer)) or n_actions < 1:
            raise OPEInputError(f"n_actions must be an integer of at least 1, but {n_actions!r} is given")
        n_actions = int(n_actions)
        a = _integer_vector("action", action)
        n = a.size
        if n == 0:
            raise OPEInputError("action must hold at least one round, but an empty array is given")
        if a.min() < 0 or a.max() >= n_actions:
            bad = int(a[(a < 0) | (a >= n_actions)][0])
            raise OPEInputError(f"action must be in [0, {n_actions}) (n_actions={n_actions}), but {bad} is given")
        r = _float_vector("reward", reward, n)
        if not np.all(np.isfinite(r)):
            raise OPEInputError(f"reward must be finite, but {r[~np.isfinite(r)][0]} is given at round {_first(~np.isfinite(r))}")
        p = _float_vector("pscore", pscore, n)
        bad_p = ~((p > 0) & (p <= 1))
        if bad_p.any():
            i = _first(bad_p)
            raise OPEInputError(f"pscore must be a probability in (0, 1], but {p[i]} is given at round {i}")
        if position is None:
            pos = np.zeros(n, dtype=np.int64)
        else:
            pos = _integer_vector("position", position)
            if pos.size != n:
                raise OPEInputError(f"position must have one entry per round ({n}), but {pos.size} are given")
            if pos.min() < 0:
                raise OPEInputError(f"position must be non-negative, but {int(pos.min())} is given")
        if len_list is None:
            len_list = int(pos.max()) + 1
        if isinstance(len_list, bool) or not isinstance(len_list, (int, np.integer)) or len_list < 1:
            raise OPEInputError(f"len_list must be an integer of at least 1, but {len_list!r} is given")
        if pos.max() >= len_list:
            raise OPEInputError(f"position must be in [0, {len_list}) (len_list={len_list}), but {int(pos.max())} is given")
        ctx = None
        if context is not None:
            ctx = np.asarray(context, dtype=np.float64)
            if ctx.ndim == 1:
                ctx = ctx[:, None]
            if ctx.ndim != 2 or ctx.shape[0] != n:
                raise OPEInputError(f"context must have shape (n_rounds={n}, n_features), but {ctx.shape} is given")
            if not np.all(np.isfinite(ctx)):
                raise OPEInputError("context must be finite, but it holds NaN or infinite values")
        return cls(a, r, p, pos, n_actions, int(len_list), ctx)

    @property
    def n_rounds(self) -> int:
        return int(self.action.size)

    def supported(self) -> NDArray[np.bool_]:
        """(n_actions, len_list): whether the log holds a round of that action at that slot
        (every logged round has a positive propensity)."""
        cells = np.bincount(self.action * self.len_list + self.position, minlength=self.n_actions * self.len_list)
        return (cells > 0).reshape(self.n_actions, self.len_list)


def _first(mask: NDArray[np.bool_]) -> int:
    return int(np.flatnonzero(mask)[0])


def _integer_vector(name: str, values: ArrayLike) -> IntArray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise OPEInputError(f"{name} must be 1-dimensional, but an array of shape {arr.shape} is given")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    if arr.dtype.kind == "f" and arr.size == 0:
        return arr.astype(np.int64)
    raise OPEInputError(f"{name} must hold integers, but dtype {arr.dtype} with values like {arr[:3].tolist()} is given")


def _float_vector(name: str, values: ArrayLike, n: int) -> FloatArray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise OPEInputError(f"{name} must hold numbers, but {values!r:.80} is given") from exc
    if arr.ndim != 1 or arr.size != n:
        raise OPEInputError(f"{name} must have shape ({n},) (one per round), but {arr.shape} is given")
    return arr


def check_action_dist(action_dist: ArrayLike, n_rounds: int, n_actions: int, len_list: int,
                      name: str = "action_dist") -> FloatArray:
    """`action_dist` as a float array of shape (n_rounds, n_actions, len_list), checked to be
    non-negative and finite and to sum to 1 over actions at every (round, slot); raises
    `OPEInputError` naming `name`. A read-only broadcast view (the same distribution in
    every round) is checked once, not once per round."""
    arr = np.asarray(action_dist, dtype=np.float64)
    expected = (n_rounds, n_actions, len_list)
    if arr.shape != expected:
        raise OPEInputError(f"{name} must have shape (n_rounds, n_actions, len_list) = {expected}, but {arr.shape} is given")
    distinct = arr[:1] if arr.strides[0] == 0 else arr
    for start in range(0, distinct.shape[0], _ROW_CHUNK):
        block = distinct[start:start + _ROW_CHUNK]
        sums = block.sum(axis=1)  # NaN and ±inf make a sum that is not 1
        off = ~(np.abs(sums - 1.0) <= _SUM_TOLERANCE)
        if off.any():
            i, slot = (int(x) for x in np.argwhere(off)[0])
            raise OPEInputError(f"{name} must sum to 1 over actions at every round and slot, "
                                f"but it sums to {float(sums[i, slot])} at round {start + i}, slot {slot}")
        low = block.min()
        if low < 0:
            i, act, slot = (int(x) for x in np.argwhere(block < 0)[0])
            raise OPEInputError(f"{name} must be non-negative, but {float(block[i, act, slot])} is given "
                                f"at round {start + i}, action {act}, slot {slot}")
    return arr


# ---------------------------------------------------------------------------------------
# Per-round parts every estimator is built from


@dataclass(frozen=True)
class RoundParts:
    """What the estimators need per round, each shape (n_rounds,): the target's probability
    of the logged action at its slot (`target_prob`), the importance weight
    `weight` = target_prob / pscore, the reward, and with a reward model the prediction
    for the logged action (`q_logged`, q̂(x_i, a_i, p_i)) and the target's average
    prediction at the slot (`q_target`, Σ_a π_e q̂ / Σ_a π_e). `support_deficit` is the
    per-round share of the target's mass on unsupported actions (see `Diagnostics`)."""

    target_prob: FloatArray
    weight: FloatArray
    reward: FloatArray
    pscore: FloatArray
    q_logged: FloatArray | None
    q_target: FloatArray | None
    support_deficit: FloatArray


def round_parts(log: BanditLog, action_dist: ArrayLike, estimated_rewards: ArrayLike | None = None) -> RoundParts:
    """Validate `action_dist` (and `estimated_rewards`, both (n_rounds, n_actions, len_list))
    against `log` and compute the per-round parts, reading the large arrays in row chunks."""
    n, k, slots = log.n_rounds, log.n_actions, log.len_list
    pi = check_action_dist(action_dist, n, k, slots)
    q = None
    if estimated_rewards is not None:
        q = np.asarray(estimated_rewards, dtype=np.float64)
        if q.shape != pi.shape:
            raise OPEInputError(f"estimated_rewards must have the shape of action_dist {pi.shape}, but {q.shape} is given")
    rows = np.arange(n)
    target_prob = pi[rows, log.action, log.position]
    weight = target_prob / log.pscore
    unsupported = ~log.supported()  # (k, slots)
    any_unsupported = bool(unsupported.any())
    deficit = np.zeros(n)
    q_logged = q_target = None
    if q is not None:
        q_logged = q[rows, log.action, log.position]
        if not np.all(np.isfinite(q_logged)):
            raise OPEInputError("estimated_rewards must be finite, but it holds NaN or infinite values")
        q_target = np.empty(n)
    if q is not None or any_unsupported:
        for start in range(0, n, _ROW_CHUNK):
            r = rows[start:start + _ROW_CHUNK]
            pos = log.position[r]
            pi_slot = pi[r, :, pos]  # (chunk, k)
            if q is not None:
                q_slot = q[r, :, pos]
                if not np.all(np.isfinite(q_slot)):
                    raise OPEInputError("estimated_rewards must be finite, but it holds NaN or infinite values")
                q_target[r] = np.einsum("ij,ij->i", pi_slot, q_slot) / pi_slot.sum(axis=1)
            if any_unsupported:
                deficit[r] = np.einsum("ij,ij->i", pi_slot, unsupported[:, pos].T)
    return RoundParts(target_prob, weight, log.reward, log.pscore, q_logged, q_target, deficit)


# ---------------------------------------------------------------------------------------
# Estimators


class Estimator(Protocol):
    """An off-policy estimator: per-round numerators u and weights v (None = all ones);
    the estimate is Σu / Σv and its intervals resample the same (u, v)."""

    @property
    def name(self) -> str: ...

    needs_reward_model: bool

    def round_terms(self, parts: RoundParts) -> tuple[FloatArray, FloatArray | None]: ...


def _check_bound(owner: str, field_name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not value >= 0:
        raise OPEInputError(f"{owner}: {field_name} must be a number >= 0 (inf for none), but {value!r} is given")
    return float(value)


def _suffix(**params: float) -> str:
    shown = [f"{k}={v:g}" for k, v in params.items() if math.isfinite(v)]
    return f"({', '.join(shown)})" if shown else ""


def _reward_model_parts(parts: RoundParts, who: str) -> tuple[FloatArray, FloatArray]:
    if parts.q_logged is None or parts.q_target is None:
        raise OPEInputError(f"{who} needs estimated_rewards (n_rounds, n_actions, len_list), but none is given")
    return parts.q_logged, parts.q_target


@dataclass(frozen=True)
class IPS:
    """Inverse propensity scoring: mean of min(w, clip)·r. Unbiased without clipping when
    pscore is the true logging probability and the target's support is logged."""

    clip: float = math.inf
    needs_reward_model: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        _check_bound("IPS", "clip", self.clip)

    @property
    def name(self) -> str:
        return "ips" + _suffix(clip=self.clip)

    def round_terms(self, parts: RoundParts) -> tuple[FloatArray, FloatArray | None]:
        w = parts.weight if math.isinf(self.clip) else np.minimum(parts.weight, self.clip)
        return w * parts.reward, None


@dataclass(frozen=True)
class SNIPS:
    """Self-normalised IPS: Σ w·r / Σ w. Biased by O(1/n), bounded by the reward range,
    and usually of much lower variance than IPS."""

    needs_reward_model: bool = field(default=False, init=False)

    @property
    def name(self) -> str:
        return "snips"

    def round_terms(self, parts: RoundParts) -> tuple[FloatArray, FloatArray | None]:
        return parts.weight * parts.reward, parts.weight


@dataclass(frozen=True)
class DM:
    """Direct method: mean over rounds of the reward model's value of the target at the
    logged slot, Σ_a π_e(a | x_i, p_i)·q̂(x_i, a, p_i). Only as good as the model."""

    needs_reward_model: bool = field(default=True, init=False)

    @property
    def name(self) -> str:
        return "dm"

    def round_terms(self, parts: RoundParts) -> tuple[FloatArray, FloatArray | None]:
        return _reward_model_parts(parts, "dm")[1].copy(), None


@dataclass(frozen=True)
class DR:
    """Doubly robust: DM plus the importance-weighted residual of the logged action,
    q̂_i(π_e) + min(w_i, clip)·(r_i − q̂_i); unbiased if either pscore or q̂ is right."""

    clip: float = math.inf
    needs_reward_model: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        _check_bound("DR", "clip", self.clip)

    @property
    def name(self) -> str:
        return "dr" + _suffix(clip=self.clip)

    def round_terms(self, parts: RoundParts) -> tuple[FloatArray, FloatArray | None]:
        q_logged, q_target = _reward_model_parts(parts, self.name)
        w = parts.weight if math.isinf(self.clip) else np.minimum(parts.weight, self.clip)
        return q_target + w * (parts.reward - q_logged), None


@dataclass(frozen=True)
class SwitchDR:
    """Switch-DR: DR's correction only on rounds whose weight is at most `threshold`
    (OBP's lambda_), DM alone above it; threshold inf is DR, 0 keeps only rounds with
    weight 0 corrected (that is, DM)."""

    threshold: float = math.inf
    needs_reward_model: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        _check_bound("SwitchDR", "threshold", self.threshold)

    @property
    def name(self) -> str:
        return "switch-dr" + _suffix(threshold=self.threshold)

    def round_terms(self, parts: RoundParts) -> tuple[FloatArray, FloatArray | None]:
        q_logged, q_target = _reward_model_parts(parts, self.name)
        kept = np.where(parts.weight <= self.threshold, parts.weight, 0.0)
        return q_target + kept * (parts.reward - q_logged), None


ReplayWeighting = Literal["uniform", "propensity"]


@dataclass(frozen=True)
class Replay:
    """Replay (Li et al. 2011): the mean reward over the rounds where the target would have
    taken the logged action. With `weighting="uniform"` (a log whose pscore is the same in
    every round, e.g. a uniform A/B or an exploration bucket) a round counts with the
    target's probability of its logged action π_e(a_i | x_i, p_i): 1 or 0 for a
    deterministic target, which is OBP's `ReplayMethod`. `weighting="propensity"` is the
    variant for non-uniform logs: each round counts with w_i = π_e(a_i)/pscore_i, which is
    SNIPS's estimate. Raises if no round matches."""

    weighting: ReplayWeighting = "uniform"
    needs_reward_model: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.weighting not in ("uniform", "propensity"):
            raise OPEInputError(f"Replay: weighting must be 'uniform' or 'propensity', but {self.weighting!r} is given")

    @property
    def name(self) -> str:
        return f"replay({self.weighting})"

    def round_terms(self, parts: RoundParts) -> tuple[FloatArray, FloatArray | None]:
        if self.weighting == "uniform":
            lo, hi = float(parts.pscore.min()), float(parts.pscore.max())
            if hi - lo > 1e-9 * hi:
                raise OPEInputError(f"replay(uniform) needs a log whose pscore is the same in every round, but pscore ranges "
                                    f"from {lo!r} to {hi!r}; use Replay(weighting='propensity') for a non-uniform log")
            m = parts.target_prob
        else:
            m = parts.weight
        return m * parts.reward, m


# ---------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Interval:
    """A two-sided interval at `level` (e.g. 0.95) and how it was made."""

    lower: float
    upper: float
    level: float
    method: Literal["bootstrap-percentile", "normal"]


@dataclass(frozen=True)
class Diagnostics:
    """How far the log can speak for the target.

    - `effective_sample_size`: (Σ w_i)² / Σ w_i² over the importance weights w_i =
      π_e(a_i | x_i, p_i) / pscore_i (Kish); n_rounds when w is constant, 0 when every w is 0.
    - `max_importance_weight`: max_i w_i.
    - `support_deficit`: the share of the target's mass, averaged over the logged rounds, on
      actions the log never shows at that slot: (1/n) Σ_i Σ_a π_e(a | x_i, p_i)·1{no
      logged round has action a at slot p_i}. Every logged round has pscore > 0, so this is
      the mass on (action, slot) cells the logging policy never took; importance weighting
      cannot see it (IPS is biased by up to this share times the reward range), only a
      reward model can. It is a lower bound of the deficit against the logging policy's
      own support, which a log of finitely many rounds cannot reveal.
    """

    n_rounds: int
    effective_sample_size: float
    max_importance_weight: float
    support_deficit: float


@dataclass(frozen=True)
class EstimatorResult:
    """One estimator's answer.

    `round_rewards` (n_rounds,): OBP's per-round estimated rewards u_i / mean(v), whose mean
    is `estimate`; `round_weights` (n_rounds,): v_i (all 1 except for self-normalised
    estimators), so Σ u / Σ v = estimate with u = round_rewards·mean(v). `bootstrap` is the
    percentile interval of the Poisson bootstrap of Σu/Σv (None when n_bootstrap is 0),
    `normal` the normal (delta-method) interval: estimate ± z·sd(u − estimate·v)/(√n·mean v).
    Both treat `estimated_rewards` as fixed, as OBP's do: where the reward model alone
    speaks (DM; switch-DR above its threshold) they leave out the model's own error.
    """

    estimator: str
    estimate: float
    round_rewards: FloatArray
    round_weights: FloatArray
    bootstrap: Interval | None
    normal: Interval
    diagnostics: Diagnostics


def diagnostics(parts: RoundParts) -> Diagnostics:
    """The diagnostics of a log and target (see `Diagnostics`)."""
    w = parts.weight
    total_sq = float(np.dot(w, w))
    ess = float(w.sum()) ** 2 / total_sq if total_sq > 0 else 0.0
    return Diagnostics(int(w.size), ess, float(w.max()), float(parts.support_deficit.mean()))


# ---------------------------------------------------------------------------------------
# Bootstrap

# Resampling counts: a distribution on {0, …, 5} in steps of 1/256 with exactly Poisson(1)'s
# mean and variance (third central moment 0.96 against 1; total variation 0.012), drawn by
# comparing one random byte per (resample, round) with these thresholds: count = the number
# of thresholds the byte reaches. P(0..5) = (95, 92, 49, 15, 4, 1) / 256.
_COUNT_THRESHOLDS = (95, 187, 236, 251, 255)


def poisson_bootstrap(terms: Sequence[tuple[FloatArray, FloatArray | None]], n_bootstrap: int,
                      rng: np.random.Generator) -> FloatArray:
    """Bootstrap replicates of Σ_i c_i·u_i / Σ_i c_i·v_i for each (u, v) of `terms` (each
    (n,), v None for all ones), shape (n_bootstrap, len(terms)).

    The Poisson bootstrap: each resample gives every round an independent count c_i of
    mean 1 and variance 1 (see `_COUNT_THRESHOLDS`) instead of drawing exactly n rounds;
    for n in the thousands and up its replicates are those of the multinomial bootstrap.
    All terms share the counts, so replicates of different estimators are paired. The work
    is chunked by rows: per chunk one random byte per (resample, round), a few byte
    comparisons, and one float32 matrix product with the centred terms (centred on the
    estimate, so float32 sums lose nothing that matters at the scale of the spread).
    A resample whose Σ c·v is 0 gives NaN (only with very few rounds or weights).
    """
    n = terms[0][0].size
    columns: list[FloatArray] = [np.ones(n)]
    plan: list[tuple[float, int, float, int | None]] = []  # (theta, u col, v mean, v col)
    for u, v in terms:
        theta = float(u.sum() / (n if v is None else v.sum()))
        if v is None:
            columns.append(u - theta)
            plan.append((theta, len(columns) - 1, 1.0, None))
        else:
            v_mean = float(v.mean())
            columns.append(u - theta * v)
            columns.append(v - v_mean)
            plan.append((theta, len(columns) - 2, v_mean, len(columns) - 1))
    matrix = np.stack(columns, axis=1).astype(np.float32)  # (n, n_columns)
    sums = np.zeros((n_bootstrap, matrix.shape[1]))
    chunk = max(256, 4_194_304 // max(n_bootstrap, 1))
    bits = rng.bit_generator
    counts = np.empty((n_bootstrap, min(chunk, n)), dtype=np.uint8)
    reached = np.empty_like(counts, dtype=np.bool_)
    as_float = np.empty(counts.shape, dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        raw = bits.random_raw(-(-n_bootstrap * m // 8)).view(np.uint8)[:n_bootstrap * m].reshape(n_bootstrap, m)
        c, hit, f = counts[:, :m], reached[:, :m], as_float[:, :m]
        np.greater_equal(raw, _COUNT_THRESHOLDS[0], out=c.view(np.bool_))
        for threshold in _COUNT_THRESHOLDS[1:]:
            np.greater_equal(raw, threshold, out=hit)
            c += hit
        f[...] = c
        sums += f @ matrix[start:start + m]
    count_total = sums[:, 0]
    out = np.empty((n_bootstrap, len(terms)))
    with np.errstate(invalid="ignore", divide="ignore"):
        for j, (theta, u_col, v_mean, v_col) in enumerate(plan):
            denominator = v_mean * count_total + (0.0 if v_col is None else sums[:, v_col])
            out[:, j] = theta + sums[:, u_col] / denominator
    return out


def _normal_interval(u: FloatArray, v: FloatArray | None, theta: float, z: float, level: float) -> Interval:
    n = u.size
    if n < 2:
        return Interval(math.nan, math.nan, level, "normal")
    influence = u - theta if v is None else u - theta * v
    v_mean = 1.0 if v is None else float(v.mean())
    half = z * float(influence.std(ddof=1)) / (math.sqrt(n) * v_mean)
    return Interval(theta - half, theta + half, level, "normal")


def _as_generator(rng: int | np.random.Generator) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, bool) or not isinstance(rng, (int, np.integer)) or rng < 0:
        raise OPEInputError(f"rng must be a non-negative integer seed or a numpy Generator, but {rng!r} is given")
    return np.random.default_rng(int(rng))


# ---------------------------------------------------------------------------------------
# Running estimators


def evaluate(
    log: BanditLog,
    action_dist: ArrayLike,
    estimators: Sequence[Estimator],
    estimated_rewards: ArrayLike | None = None,
    *,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    rng: int | np.random.Generator = 0,
) -> dict[str, EstimatorResult]:
    """Every estimator's result for the target `action_dist` (n_rounds, n_actions,
    len_list) on `log`, keyed by estimator name.

    `estimated_rewards` (same shape) is required by DM, DR and SwitchDR. `n_bootstrap`
    Poisson-bootstrap resamples (0 for none) shared by all estimators, percentile intervals
    at `level`; `rng` is a seed or a Generator, the only source of randomness."""
    if not estimators:
        raise OPEInputError("estimators must name at least one estimator, but none is given")
    names = [e.name for e in estimators]
    if len(set(names)) != len(names):
        raise OPEInputError(f"estimators must have distinct names, but {names} is given")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise OPEInputError(f"n_bootstrap must be an integer >= 0, but {n_bootstrap!r} is given")
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise OPEInputError(f"level must be in (0, 1), but {level!r} is given")
    generator = _as_generator(rng)
    missing = [e.name for e in estimators if e.needs_reward_model]
    if missing and estimated_rewards is None:
        raise OPEInputError(f"estimated_rewards (n_rounds, n_actions, len_list) is needed by {missing}, but none is given")
    parts = round_parts(log, action_dist, estimated_rewards)
    diag = diagnostics(parts)
    terms = [e.round_terms(parts) for e in estimators]
    for name, (u, v) in zip(names, terms):
        if v is not None and not v.sum() > 0:
            raise OPEInputError(f"{name}: the target gives probability 0 to every logged action, so there is nothing "
                                "to average (the log cannot speak for this target)")
    z = float(sps.norm.ppf(0.5 + level / 2))
    replicates = poisson_bootstrap(terms, int(n_bootstrap), generator) if n_bootstrap > 0 else None
    results: dict[str, EstimatorResult] = {}
    for j, (name, (u, v)) in enumerate(zip(names, terms)):
        n = u.size
        v_all = np.ones(n) if v is None else v
        v_mean = float(v_all.mean())
        theta = float(u.sum() / v_all.sum())
        boot = None
        if replicates is not None:
            lo, hi = np.nanpercentile(replicates[:, j], [100 * (1 - level) / 2, 100 * (1 + level) / 2])
            boot = Interval(float(lo), float(hi), float(level), "bootstrap-percentile")
        results[name] = EstimatorResult(name, theta, u / v_mean, v_all, boot, _normal_interval(u, v, theta, z, level), diag)
    return results


def estimate(estimator: Estimator, log: BanditLog, action_dist: ArrayLike, estimated_rewards: ArrayLike | None = None,
             *, n_bootstrap: int = 1000, level: float = 0.95, rng: int | np.random.Generator = 0) -> EstimatorResult:
    """One estimator's result (see `evaluate`)."""
    return evaluate(log, action_dist, [estimator], estimated_rewards, n_bootstrap=n_bootstrap, level=level,
                    rng=rng)[estimator.name]


# ---------------------------------------------------------------------------------------
# Reward model


def fit_reward_model(log: BanditLog, *, n_folds: int = 5, ridge: float = 1.0, prior_strength: float = 1.0,
                     rng: int | np.random.Generator = 0) -> FloatArray:
    """Cross-fitted reward predictions q̂(x_i, a, l) for every round, action and slot, shape
    (n_rounds, n_actions, len_list), for DM and DR.

    The model: q̂(x, a, l) = m_{a,l} + (x − x̄_{a,l})·β_a. m_{a,l} and x̄_{a,l} are the mean
    reward and mean context of the rounds of action a at slot l, each shrunk toward the
    overall mean by `prior_strength` pseudo-rounds (a cell never logged predicts the
    overall mean); β_a (n_features,) is the ridge regression (penalty `ridge`) of action
    a's rewards on its contexts within its cells (both centred at their cell's means): the
    least-squares fit of an intercept per (action, slot) and a slope per action. Without
    context only the cell means remain. It is linear: for 0/1 rewards its predictions may
    leave [0, 1].

    Cross-fitting: rounds are split at random (`rng`) into `n_folds` folds; each round's
    predictions come from the model fitted on the other folds, so a round's own reward
    never enters its prediction (Chernozhukov et al. 2018; OBP's `fit_predict`).
    """
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or not 2 <= n_folds <= log.n_rounds:
        raise OPEInputError(f"n_folds must be an integer in [2, n_rounds={log.n_rounds}], but {n_folds!r} is given")
    for name, value in (("ridge", ridge), ("prior_strength", prior_strength)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise OPEInputError(f"{name} must be a finite number >= 0, but {value!r} is given")
    generator = _as_generator(rng)
    n, k, slots = log.n_rounds, log.n_actions, log.len_list
    fold = np.empty(n, dtype=np.int64)
    fold[generator.permutation(n)] = np.arange(n) % n_folds
    cell = log.action * slots + log.position
    x = log.context
    d = 0 if x is None else x.shape[1]
    intercept = np.empty((n_folds, k, slots))  # m_{a,l} − x̄_{a,l}·β_a
    coef = np.zeros((n_folds, k, d))
    for f in range(n_folds):
        train = fold != f
        intercept[f], coef[f] = _fit_cells(log.reward[train], cell[train], None if x is None else x[train],
                                           k, slots, ridge, prior_strength)
    # Each row from its own fold's model: the slopes' part x·β_a (n, k), then the output in
    # row chunks.
    slope_part = np.zeros((n, k))
    if x is not None:
        for f in range(n_folds):
            rows = np.flatnonzero(fold == f)
            slope_part[rows] = x[rows] @ coef[f].T
    out = np.empty((n, k, slots))
    for start in range(0, n, _ROW_CHUNK):
        rows = slice(start, start + _ROW_CHUNK)
        np.add(intercept[fold[rows]], slope_part[rows][:, :, None], out=out[rows])
    return out


def _fit_cells(reward: FloatArray, cell: IntArray, x: FloatArray | None, k: int, slots: int, ridge: float,
               prior_strength: float) -> tuple[FloatArray, FloatArray]:
    """One fold's model (see `fit_reward_model`) from grouped sums, no loop over rounds:
    the intercepts m_{a,l} − x̄_{a,l}·β_a, shape (k, slots), and the slopes β, (k, d)."""
    cells = k * slots
    count = np.bincount(cell, minlength=cells).astype(np.float64)
    sum_r = np.bincount(cell, weights=reward, minlength=cells)
    overall = float(reward.mean())
    shrunk = count + prior_strength
    if prior_strength > 0:
        mean_r = (sum_r + prior_strength * overall) / shrunk
    else:
        mean_r = np.where(count > 0, sum_r / np.maximum(count, 1.0), overall)
    if x is None:
        return mean_r.reshape(k, slots), np.zeros((k, 0))
    d = x.shape[1]
    sum_x = np.stack([np.bincount(cell, weights=x[:, j], minlength=cells) for j in range(d)], axis=1)
    sum_xr = np.stack([np.bincount(cell, weights=x[:, j] * reward, minlength=cells) for j in range(d)], axis=1)
    sum_xx = np.empty((cells, d, d))
    for i in range(d):
        for j in range(i, d):
            sum_xx[:, i, j] = sum_xx[:, j, i] = np.bincount(cell, weights=x[:, i] * x[:, j], minlength=cells)
    raw_x = sum_x / np.maximum(count, 1.0)[:, None]
    raw_r = sum_r / np.maximum(count, 1.0)
    # Within-cell scatter and cross products, summed over each action's slots.
    scatter = (sum_xx - count[:, None, None] * raw_x[:, :, None] * raw_x[:, None, :]).reshape(k, slots, d, d).sum(axis=1)
    cross = (sum_xr - count[:, None] * raw_x * raw_r[:, None]).reshape(k, slots, d).sum(axis=1)
    beta = np.linalg.solve(scatter + max(ridge, 1e-12) * np.eye(d)[None], cross[:, :, None])[:, :, 0]
    overall_x = x.mean(axis=0)
    if prior_strength > 0:
        mean_x = (sum_x + prior_strength * overall_x) / shrunk[:, None]
    else:
        mean_x = np.where(count[:, None] > 0, raw_x, overall_x)
    intercept = mean_r.reshape(k, slots) - np.einsum("ald,ad->al", mean_x.reshape(k, slots, d), beta)
    return intercept, beta


# ---------------------------------------------------------------------------------------
# Targets


def _check_rounds(n_rounds: int, len_list: int) -> None:
    if isinstance(n_rounds, bool) or not isinstance(n_rounds, (int, np.integer)) or n_rounds < 1:
        raise OPEInputError(f"n_rounds must be an integer of at least 1, but {n_rounds!r} is given")
    if isinstance(len_list, bool) or not isinstance(len_list, (int, np.integer)) or len_list < 1:
        raise OPEInputError(f"len_list must be an integer of at least 1, but {len_list!r} is given")


def _every_round(dist: FloatArray, n_rounds: int) -> FloatArray:
    """(n_actions, len_list) → a read-only (n_rounds, n_actions, len_list) view."""
    return np.broadcast_to(dist, (n_rounds, *dist.shape))


def always_arm_action_dist(arm: int, n_rounds: int, n_actions: int, len_list: int = 1) -> FloatArray:
    """The target that always takes action `arm` at every slot: (n_rounds, n_actions,
    len_list), a read-only view."""
    _check_rounds(n_rounds, len_list)
    if isinstance(n_actions, bool) or not isinstance(n_actions, (int, np.integer)) or n_actions < 1:
        raise OPEInputError(f"n_actions must be an integer of at least 1, but {n_actions!r} is given")
    if isinstance(arm, bool) or not isinstance(arm, (int, np.integer)) or not 0 <= arm < n_actions:
        raise OPEInputError(f"arm must be an integer in [0, {n_actions}) (n_actions={n_actions}), but {arm!r} is given")
    dist = np.zeros((n_actions, len_list))
    dist[arm] = 1.0
    return _every_round(dist, n_rounds)


def static_split_action_dist(weights: ArrayLike, n_rounds: int, len_list: int = 1) -> FloatArray:
    """A static split: `weights` (n_actions,), normalised to sum 1, the same at every round
    and slot; (n_rounds, n_actions, len_list), a read-only view. The last published weight
    table of an experiment is such a split (its weights in arm order)."""
    _check_rounds(n_rounds, len_list)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size < 1:
        raise OPEInputError(f"weights must be a 1-dimensional array with one weight per action, but shape {w.shape} is given")
    if not np.all(np.isfinite(w)) or (w < 0).any() or not w.sum() > 0:
        raise OPEInputError(f"weights must be finite, non-negative and not all zero, but {w.tolist()} is given")
    dist = np.repeat((w / w.sum())[:, None], len_list, axis=1)
    return _every_round(dist, n_rounds)


def action_dist_from_probabilities(probabilities: ArrayLike, n_rounds: int, n_actions: int, len_list: int = 1,
                                   source: str = "action_dist") -> FloatArray:
    """A target given as an array of probabilities, e.g. the contents of a .npy file:
    shape (n_rounds, n_actions, len_list), or (n_actions, len_list) for the same
    distribution in every round (returned as a read-only view); (n_actions,) is accepted
    when len_list is 1. Checked like any action_dist; errors name `source` (pass the
    file's path)."""
    _check_rounds(n_rounds, len_list)
    arr = np.asarray(probabilities)
    if arr.dtype.kind not in "fiu":
        raise OPEInputError(f"{source} must hold numbers, but dtype {arr.dtype} is given")
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim == 1 and len_list == 1:
        arr = arr[:, None]
    if arr.ndim == 2:
        if arr.shape != (n_actions, len_list):
            raise OPEInputError(f"{source} must have shape (n_actions, len_list) = {(n_actions, len_list)} or "
                                f"(n_rounds, n_actions, len_list) = {(n_rounds, n_actions, len_list)}, but {arr.shape} is given")
        arr = _every_round(arr, n_rounds)
    elif arr.ndim != 3:
        raise OPEInputError(f"{source} must have 2 or 3 dimensions, (n_actions, len_list) or (n_rounds, n_actions, "
                            f"len_list), but shape {arr.shape} is given")
    return check_action_dist(arr, n_rounds, n_actions, len_list, name=source)


def _policy_setup(arms: Sequence[str], action: ArrayLike, reward: ArrayLike, len_list: int,
                  reward_type: RewardType) -> tuple[IntArray, FloatArray]:
    if len(arms) < 1 or len(set(arms)) != len(arms):
        raise OPEInputError(f"arms must name at least one arm, each once, but {list(arms)} is given")
    if reward_type not in ("binary", "continuous"):
        raise OPEInputError(f"reward_type must be 'binary' or 'continuous', but {reward_type!r} is given")
    a = _integer_vector("action", action)
    if a.size and (a.min() < 0 or a.max() >= len(arms)):
        raise OPEInputError(f"action must index arms, in [0, {len(arms)}), but {int(a[(a < 0) | (a >= len(arms))][0])} is given")
    r = _float_vector("reward", reward, a.size)
    if not np.all(np.isfinite(r)):
        raise OPEInputError("reward must be finite, but it holds NaN or infinite values")
    _check_rounds(max(a.size, 1), len_list)
    return a, r


def replayed_policy_action_dist(
    policy: str,
    params: Mapping[str, Any],
    arms: Sequence[str],
    action: ArrayLike,
    reward: ArrayLike,
    *,
    batch_size: int = 1,
    len_list: int = 1,
    reward_type: RewardType = "binary",
    prior: BetaPrior | tuple[BetaPrior, ...] | NormalInverseGammaPrior | None = None,
) -> FloatArray:
    """A Sluice policy (`sluice.core.policies`, by name with its parameters) replayed over
    the log in order: (n_rounds, len(arms), len_list), the same distribution at every slot.

    Rounds are taken in log order in consecutive batches of `batch_size`; every round of
    batch j gets `policy_probabilities(policy, params, stats, ctx)` where `stats` is the
    `ArmStatistics` of the logged (action, reward) of all rounds of batches 0 … j−1 (the
    first batch sees none). batch_size 1 is round by round; a larger batch is what a policy
    re-published every `batch_size` serves gives, and costs one policy call per batch.
    The policy learns from every logged round, as Sluice's worker fed the logging policy:
    this is the distribution the target would have served given the data the system saw,
    not a simulation of the data it would have gathered itself.
    `action` (n_rounds,) indexes `arms`; `reward` (n_rounds,).
    """
    a, r = _policy_setup(arms, action, reward, len_list, reward_type)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise OPEInputError(f"batch_size must be an integer of at least 1, but {batch_size!r} is given")
    n, k = a.size, len(arms)
    ctx = PolicyContext(tuple(arms), reward_type, prior)
    n_batches = -(-n // batch_size)
    batch = np.arange(n) // batch_size
    flat = batch * k + a
    size = n_batches * k
    per_batch = [np.bincount(flat, weights=w, minlength=size).reshape(n_batches, k) for w in (None, r, r * r)]
    before = [np.vstack([np.zeros((1, k)), np.cumsum(s, axis=0)[:-1]]) for s in per_batch]
    probs = np.empty((n_batches, k))
    for j in range(n_batches):
        stats = ArmStatistics(before[0][j], before[1][j], before[2][j])
        probs[j] = policy_probabilities(policy, params, stats, ctx)
    per_round = probs[batch]  # (n, k)
    return np.repeat(per_round[:, :, None], len_list, axis=2)


def current_policy_action_dist(
    policy: str,
    params: Mapping[str, Any],
    arms: Sequence[str],
    action: ArrayLike,
    reward: ArrayLike,
    n_rounds: int,
    *,
    len_list: int = 1,
    reward_type: RewardType = "binary",
    prior: BetaPrior | tuple[BetaPrior, ...] | NormalInverseGammaPrior | None = None,
) -> FloatArray:
    """A Sluice policy's current distribution, from the statistics of the whole log
    (`action`, `reward`, (n,)), applied to every one of `n_rounds` rounds:
    (n_rounds, len(arms), len_list), a read-only view."""
    a, r = _policy_setup(arms, action, reward, len_list, reward_type)
    _check_rounds(n_rounds, len_list)
    stats = ArmStatistics.from_rewards(a, r, len(arms))
    probs = policy_probabilities(policy, params, stats, PolicyContext(tuple(arms), reward_type, prior))
    return _every_round(np.repeat(probs[:, None], len_list, axis=1), n_rounds)


# ---------------------------------------------------------------------------------------
# Replaying a learning policy through a log


@dataclass(frozen=True)
class ReplayTrace:
    """A policy replayed through a log with its own posterior (`replay_policy`).

    accepted: (n_rounds,) whether round i counted for the policy; reward: (n_rounds,) its
    reward where accepted (0 elsewhere); probability: (n_rounds,) the policy's probability
    of the logged action when it met round i. `mean_reward` is over accepted rounds,
    `running_mean` (n_accepted,) after each of them."""

    accepted: NDArray[np.bool_]
    reward: FloatArray
    probability: FloatArray

    @property
    def n_accepted(self) -> int:
        return int(self.accepted.sum())

    @property
    def mean_reward(self) -> float:
        return float(self.reward[self.accepted].mean()) if self.accepted.any() else math.nan

    @property
    def running_mean(self) -> FloatArray:
        r = self.reward[self.accepted]
        return np.cumsum(r) / np.arange(1, r.size + 1)


def replay_policy(
    policy: str,
    params: Mapping[str, Any],
    arms: Sequence[str],
    action: ArrayLike,
    reward: ArrayLike,
    pscore: ArrayLike,
    *,
    rng: int | np.random.Generator = 0,
    batch_size: int = 1,
    reward_type: RewardType = "binary",
    prior: BetaPrior | tuple[BetaPrior, ...] | NormalInverseGammaPrior | None = None,
) -> ReplayTrace:
    """Run a Sluice policy through a log in time order, learning only from what it would
    have seen: rejection-sampling replay (Li et al. 2011, with propensities as in Dudík,
    Erhan, Langford & Li 2012).

    At round i the policy, from the statistics of the rounds it accepted so far, gives the
    logged action a_i probability π_i; the round is accepted with probability
    π_i · c / pscore_i, where c = min(pscore) makes that a probability. Accepted rounds
    are a sample of the interaction the policy would have had (each arm drawn with π_i), so
    its reward on them estimates its online reward, and only they update its posterior.
    The policy's statistics are refreshed every `batch_size` accepted rounds (a policy
    re-published now and then). `rng`: the seed of the acceptances, the only randomness.
    `action` (n,) indexes `arms`; `reward`, `pscore` (n,), in time order."""
    a, r = _policy_setup(arms, action, reward, 1, reward_type)
    p = _float_vector("pscore", pscore, a.size)
    if not np.all((p > 0) & (p <= 1)):
        raise OPEInputError("pscore must be probabilities in (0, 1]")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise OPEInputError(f"batch_size must be an integer of at least 1, but {batch_size!r} is given")
    generator = _as_generator(rng)
    k = len(arms)
    ctx = PolicyContext(tuple(arms), reward_type, prior)
    counts, sums, squares = np.zeros(k), np.zeros(k), np.zeros(k)
    c = float(p.min())
    draws = generator.random(a.size)
    accepted = np.zeros(a.size, dtype=bool)
    probability = np.zeros(a.size)
    probs = policy_probabilities(policy, params, ArmStatistics(counts.copy(), sums.copy(), squares.copy()), ctx)
    since = 0
    for i in range(a.size):
        probability[i] = probs[a[i]]
        if draws[i] < probs[a[i]] * c / p[i]:
            accepted[i] = True
            counts[a[i]] += 1
            sums[a[i]] += r[i]
            squares[a[i]] += r[i] * r[i]
            since += 1
            if since == batch_size:
                since = 0
                probs = policy_probabilities(policy, params, ArmStatistics(counts.copy(), sums.copy(), squares.copy()),
                                             ctx)
    return ReplayTrace(accepted, np.where(accepted, r, 0.0), probability)
