"""Weight guardrails: the limits applied to a policy's probability vector before it is
published, and the record of what they did.

Order (each step works on the output of the one before):

1. **warm-up**: while any free arm (live, not pinned) has fewer than
   `warmup_min_observations`, the policy's output is replaced by the warm-up weights
   (`warmup_weights`, equal by default); a pinned arm (a new model entering at its entry
   weight) does not hold the others back;
2. **kills and pins**: an arm pinned at 0 is killed (exactly 0 buckets); an arm pinned at
   p > 0 gets p (to the nearest bucket) at once, regardless of `max_step`;
3. **renormalisation**: the remaining mass goes to the free arms (live, not pinned) in
   proportion to the proposal (equally if the proposal gives them nothing);
4. **floor, cap and max step**: every free arm's weight is held in
   [max(floor, previous - max_step), min(cap, previous + max_step)]; the arms within
   their bounds are rescaled together so the free arms' total is unchanged, keeping the
   proposal's ratios among them (the closest weights to the proposal in KL divergence);
5. **bucket quantization**: largest remainder within the same bounds, in whole buckets
   (floor rounded up, cap and step rounded down to a bucket, a step never below one
   bucket), then `reallocate` from the previous allocation with minimum churn.

When the constraints cannot all hold, one is relaxed, in this order of precedence (kept
first): kills, pins, floor, cap, max step. Pins on every live arm that do not sum to 1
are scaled to 1; a floor that the free arms cannot all get is lowered to an equal share;
a cap they cannot fit under is raised to an equal share; a max step that cannot reach
the bounds is widened to the least step that can. Each relaxation is recorded with the
configured and used values and the reason. Bounds on the state (floor, cap) win over the
bound on the move (max step): a broken step is a one-off jump, a broken floor would last.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sluice.core.allocation import DEFAULT_NUM_BUCKETS, Allocation, check_num_buckets, quantize_weights, reallocate
from sluice.core.errors import CoreInputError

Rule = Literal["warmup", "kill", "pin", "renormalise", "floor", "cap", "max_step", "quantize"]
Constraint = Literal["pins", "floor", "cap", "max_step"]

_EPS = 1e-9  # slack when turning configured fractions into whole buckets


class GuardrailError(CoreInputError):
    """Inputs the guardrails cannot work with (wrong shapes, unknown arms, every arm killed)."""


class GuardrailConfig(BaseModel):
    """Limits on an experiment's weights. Fractions are of all traffic in the experiment.

    Arms are named as in the experiment spec. A pin of 0 kills the arm.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    warmup_min_observations: int = Field(
        0, ge=0, description="observations every free (unpinned) arm needs before the policy's weights are used"
    )
    warmup_weights: dict[str, float] | None = Field(
        None, description="weights during warm-up, by arm (unlisted arms get 0); None means equal"
    )
    floor: float = Field(0.0, ge=0, le=1, description="least weight of every live, unpinned arm (exploration)")
    cap: float = Field(1.0, gt=0, le=1, description="largest weight of any unpinned arm")
    max_step: float | None = Field(
        None, gt=0, le=1, description="largest change of an unpinned arm's weight per update; None = no limit"
    )
    pins: dict[str, float] = Field(
        default_factory=dict, description="arm -> fixed weight in [0, 1]; 0 kills the arm"
    )

    @model_validator(mode="after")
    def _consistent(self) -> GuardrailConfig:
        if self.floor > self.cap:
            raise ValueError(f"floor ({self.floor}) must be <= cap ({self.cap})")
        for arm, value in self.pins.items():
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"pins[{arm!r}] must be in [0, 1], but {value!r} is given")
        if sum(self.pins.values()) > 1 + _EPS:
            raise ValueError(f"pins must sum to at most 1, but {dict(self.pins)!r} sums to {sum(self.pins.values())}")
        if self.warmup_weights is not None:
            for arm, value in self.warmup_weights.items():
                if not (math.isfinite(value) and value >= 0):
                    raise ValueError(f"warmup_weights[{arm!r}] must be finite and >= 0, but {value!r} is given")
            if sum(self.warmup_weights.values()) <= 0:
                raise ValueError(f"warmup_weights must have a positive sum, but {dict(self.warmup_weights)!r} is given")
        return self

    def check_arms(self, arms: Sequence[str]) -> None:
        """Raise GuardrailError if a pin or warm-up weight names an arm not in `arms`."""
        for name, mapping in (("pins", self.pins), ("warmup_weights", self.warmup_weights or {})):
            unknown = sorted(set(mapping) - set(arms))
            if unknown:
                raise GuardrailError(f"{name} names unknown arm(s) {unknown}; the arms are {list(arms)}")


@dataclass(frozen=True)
class GuardrailAction:
    """One rule that changed the weights, the arms it touched and how."""

    rule: Rule
    arms: tuple[str, ...]
    detail: str


@dataclass(frozen=True)
class Relaxation:
    """A constraint that could not hold as configured, and the value used instead."""

    constraint: Constraint
    configured: float | None
    used: float
    reason: str


@dataclass(frozen=True, eq=False)
class GuardrailResult:
    """The weights to publish and how they came about.

    weights: bucket shares per arm, shape (K,), summing to 1 exactly in buckets;
    counts: buckets per arm, shape (K,); allocation: the bucket ranges realizing them (moved
    from the previous allocation with minimum churn); actions: the rules that changed
    something, in order; relaxations: the constraints that had to give.
    """

    weights: NDArray[np.float64]
    counts: NDArray[np.int64]
    allocation: Allocation
    actions: tuple[GuardrailAction, ...]
    relaxations: tuple[Relaxation, ...]

    def reason(self) -> str:
        """One line for the weight table's `reason`: every rule that acted and every relaxation."""
        parts = [f"{a.rule}: {a.detail}" for a in self.actions]
        parts += [f"relaxed {r.constraint} from {r.configured} to {r.used:.6g}: {r.reason}" for r in self.relaxations]
        return "; ".join(parts) if parts else "policy weights unchanged by guardrails"


def apply_guardrails(
    proposed: ArrayLike,
    config: GuardrailConfig,
    *,
    arms: Sequence[str],
    observations: ArrayLike | None = None,
    previous: Allocation | None = None,
    num_buckets: int | None = None,
) -> GuardrailResult:
    """Apply `config` to a policy's output and quantize to buckets (see the module docstring).

    proposed: the policy's weights, shape (K,), finite, >= 0 (renormalised here).
    arms: the K arm names, in the order of `proposed`.
    observations: per-arm observation counts, shape (K,); needed when warm-up is configured.
    previous: the allocation in force (None for the first table); it may have fewer arms
    than K (arms added since start with 0 buckets). num_buckets defaults to the previous
    allocation's, else 10,000.
    """
    arms = tuple(arms)
    k = len(arms)
    if k == 0 or len(set(arms)) != k:
        raise GuardrailError(f"arms must be non-empty and unique, but {list(arms)!r} is given")
    p = _vector(proposed, "proposed", k)
    config.check_arms(arms)
    n = _num_buckets(num_buckets, previous)
    if previous is not None and previous.num_arms > k:
        raise GuardrailError(f"previous allocation has {previous.num_arms} arms, more than the {k} arms given")
    prev = None if previous is None else previous.with_arms(k).counts
    log = _Log([], [])

    pin = np.array([config.pins.get(a, np.nan) for a in arms])
    killed, pinned = pin == 0, pin > 0
    live = ~killed
    free = live & ~pinned
    if not live.any():
        raise GuardrailError(f"every arm is killed (pins {dict(config.pins)!r}); at least one arm must stay live")

    # 1. warm-up
    if config.warmup_min_observations > 0:
        if observations is None:
            raise GuardrailError("observations are required when warmup_min_observations > 0")
        obs = _vector(observations, "observations", k)
        short = free & (obs < config.warmup_min_observations)  # a pinned arm's weight is not the policy's
        if short.any():
            p = _warmup_weights(config, arms, live)
            below = f"{_list(arms, short, obs)} below {config.warmup_min_observations} observations"
            log.act("warmup", arms, short, f"{below}; warm-up weights used")

    # 2. kills and pins: fixed bucket counts
    if killed.any():
        log.act("kill", arms, killed, f"{', '.join(_names(arms, killed))} set to 0")
    fixed = np.zeros(k, dtype=np.int64)
    if pinned.any():
        fixed[pinned] = _pinned_counts(pin[pinned], n, any_free=bool(free.any()), log=log)
        log.act("pin", arms, pinned, _list(arms, pinned, fixed / n, "weight"))
    remaining = n - int(fixed.sum())

    x, lo, hi = fixed.astype(np.float64), fixed.copy(), fixed.copy()
    if free.any():
        # 3. renormalisation over the free arms
        target = _renormalise(p, free, remaining, n, arms, log)
        # 4. floor, cap and max step as whole-bucket bounds, then the fit within them
        prev_free = None if prev is None else prev[free]
        lo_f, hi_f, floor_b, cap_b = _bounds(config, int(free.sum()), remaining, n, prev_free, arms, free, log)
        fitted, scale = _fit(target, lo_f, hi_f, remaining)
        _record_bounds(log, arms, np.flatnonzero(free), target, scale, fitted, lo_f, hi_f, floor_b, cap_b)
        x[free], lo[free], hi[free] = fitted, lo_f, hi_f

    # 5. quantization and minimum-churn layout
    counts = quantize_weights(np.maximum(x, 0), n, lower=lo, upper=hi)
    rounding = float(np.abs(counts - x).max()) / n
    log.actions.append(GuardrailAction("quantize", arms, f"whole buckets of {n}; largest rounding {rounding:.2g}"))
    allocation = Allocation.contiguous(counts, n) if previous is None else reallocate(previous.with_arms(k), counts)
    weights = counts / n
    weights.setflags(write=False)
    counts.setflags(write=False)
    return GuardrailResult(weights, counts, allocation, tuple(log.actions), tuple(log.relaxations))


@dataclass
class _Log:
    """What the rules did, collected while they run (local to one call)."""

    actions: list[GuardrailAction]
    relaxations: list[Relaxation]

    def act(self, rule: Rule, arms: tuple[str, ...], mask: NDArray[np.bool_], detail: str) -> None:
        self.actions.append(GuardrailAction(rule, _names(arms, mask), detail))

    def relax(self, constraint: Constraint, configured: float | None, used: float, reason: str) -> None:
        self.relaxations.append(Relaxation(constraint, configured, used, reason))


def _pinned_counts(pins: NDArray[np.float64], n: int, *, any_free: bool, log: _Log) -> NDArray[np.int64]:
    """Buckets of the pinned arms, rounded jointly so they never exceed their total share."""
    pin_sum = float(pins.sum())
    if any_free:
        total = math.floor(pin_sum * n + 0.5)
    else:
        if abs(pin_sum - 1) > _EPS:
            log.relax("pins", pin_sum, 1.0, "every live arm is pinned, so the pins were scaled to sum to 1")
        total = n
    return quantize_weights(pins, total) if total > 0 else np.zeros(pins.size, dtype=np.int64)


def _renormalise(
    p: NDArray[np.float64], free: NDArray[np.bool_], remaining: int, n: int, arms: tuple[str, ...], log: _Log
) -> NDArray[np.float64]:
    """The proposal of the free arms scaled to the `remaining` buckets (equal if it is all 0)."""
    nf = int(free.sum())
    mass = float(p[free].sum())
    target = p[free] / mass * remaining if mass > 0 else np.full(nf, remaining / nf)
    # Shares far below a bucket cannot matter after quantization, and would overflow the
    # scale search of `_fit` (bound / share).
    target[target < 1e-9] = 0.0
    if mass <= 0:
        detail = f"free arms share {remaining / n:.6g} equally (the proposal gave them nothing)"
        log.act("renormalise", arms, free, detail)
    elif abs(mass / float(p.sum()) - remaining / n) > _EPS:
        log.act("renormalise", arms, free, f"free arms share {remaining / n:.6g} of traffic")
    return target


def _bounds(
    config: GuardrailConfig,
    nf: int,
    remaining: int,
    n: int,
    prev: NDArray[np.int64] | None,
    arms: tuple[str, ...],
    free: NDArray[np.bool_],
    log: _Log,
) -> tuple[NDArray[np.int64], NDArray[np.int64], int, int]:
    """Per-free-arm bucket bounds (lo, hi) from floor, cap and max step, relaxing what cannot
    hold; also the floor and cap in buckets as used."""
    floor_b = math.ceil(config.floor * n - _EPS)
    cap_b = math.floor(config.cap * n + _EPS)
    left = f"the {remaining / n:.6g} left after pins and kills"
    if floor_b * nf > remaining:
        reason = f"{nf} free arm(s) x floor {config.floor} exceed {left}"
        log.relax("floor", config.floor, (remaining // nf) / n, reason)
        floor_b = remaining // nf
    if cap_b * nf < remaining:
        used = -(-remaining // nf)
        log.relax("cap", config.cap, used / n, f"{nf} free arm(s) capped at {config.cap} cannot carry {left}")
        cap_b = used
    if cap_b < floor_b:  # floor == cap up to the rounding to buckets
        log.relax("cap", config.cap, floor_b / n, "cap rounds to fewer buckets than the floor")
        cap_b = floor_b
    lo = np.full(nf, floor_b, dtype=np.int64)
    hi = np.full(nf, cap_b, dtype=np.int64)
    if config.max_step is None or prev is None:
        return lo, hi, floor_b, cap_b
    step_b = max(1, math.floor(config.max_step * n + _EPS))
    needed = _least_step(prev, floor_b, cap_b, remaining, step_b)
    if needed > step_b:
        reason = _step_reason(_names(arms, free), prev, floor_b, cap_b, remaining, step_b, n)
        log.relax("max_step", config.max_step, needed / n, reason)
        step_b = needed
    return np.maximum(lo, prev - step_b), np.minimum(hi, prev + step_b), floor_b, cap_b


def _least_step(prev: NDArray[np.int64], floor_b: int, cap_b: int, total: int, step_b: int) -> int:
    """The least step (in buckets) >= step_b for which the bounds admit weights summing to total."""

    def feasible(s: int) -> bool:
        lo = np.maximum(floor_b, prev - s)
        hi = np.minimum(cap_b, prev + s)
        return bool(np.all(lo <= hi) and lo.sum() <= total <= hi.sum())

    if feasible(step_b):
        return step_b
    low, high = step_b, max(int(prev.max(initial=0)), cap_b, total) + 1  # feasible at `high`
    while high - low > 1:
        mid = (low + high) // 2
        if feasible(mid):
            high = mid
        else:
            low = mid
    return high


def _step_reason(
    names: tuple[str, ...], prev: NDArray[np.int64], floor_b: int, cap_b: int, total: int, step_b: int, n: int
) -> str:
    for name, c in zip(names, prev.tolist()):
        if c + step_b < floor_b:
            return f"arm {name!r} was at {c / n:.6g}, more than max_step below the floor {floor_b / n:.6g}"
        if c - step_b > cap_b:
            return f"arm {name!r} was at {c / n:.6g}, more than max_step above the cap {cap_b / n:.6g}"
    return (
        f"the free arms must carry {total / n:.6g} of traffic (after pins and kills) but were at "
        f"{prev.sum() / n:.6g}, more than max_step per arm can cover"
    )


def _fit(
    target: NDArray[np.float64], lo: NDArray[np.int64], hi: NDArray[np.int64], total: int
) -> tuple[NDArray[np.float64], float]:
    """Weights x with lo <= x <= hi and sum(x) == total, closest to `target` in ratio.

    x = clip(s * target, lo, hi) for the scale s that makes the sum right: the minimiser of
    KL(x || target) within the bounds, so the arms no bound touches keep the proposal's
    ratios. If even every proposed arm at its upper bound leaves traffic over (arms
    proposed at 0 sit at their lower bound), those zero arms share the rest by a common
    shift, and s is returned as inf. Requires sum(lo) <= total <= sum(hi).
    """
    positive = target > 0
    kinks = np.concatenate([lo[positive] / target[positive], hi[positive] / target[positive]])
    scale = _solve_monotone(lambda s: np.clip(s * target, lo, hi).sum(), kinks, total)
    if scale is not None:
        return np.clip(scale * target, lo, hi), scale
    x = np.where(positive, hi, lo).astype(np.float64)
    lo_z, hi_z = lo[~positive].astype(np.float64), hi[~positive].astype(np.float64)
    rest = total - float(x[positive].sum())
    shift = _solve_monotone(lambda t: np.clip(lo_z + t, lo_z, hi_z).sum(), hi_z - lo_z, rest)
    x[~positive] = np.clip(lo_z + (shift if shift is not None else np.inf), lo_z, hi_z)
    return x, math.inf


def _solve_monotone(g: Callable[[float], float], kinks: NDArray[np.float64], total: float) -> float | None:
    """The least t >= 0 with g(t) == total, for g piecewise linear and non-decreasing with
    its kinks among `kinks`; None if g stays below `total` past the last kink."""
    points = np.unique(np.concatenate([[0.0], kinks]))
    values = np.array([g(t) for t in points])
    j = int(np.searchsorted(values, total, side="left"))
    if j == points.size:
        return None
    if j == 0 or values[j] == values[j - 1]:
        return float(points[j])
    return float(points[j - 1] + (total - values[j - 1]) * (points[j] - points[j - 1]) / (values[j] - values[j - 1]))


def _record_bounds(
    log: _Log,
    arms: tuple[str, ...],
    free_idx: NDArray[np.int64],
    target: NDArray[np.float64],
    scale: float,
    fitted: NDArray[np.float64],
    lo: NDArray[np.int64],
    hi: NDArray[np.int64],
    floor_b: int,
    cap_b: int,
) -> None:
    """Record which bound held each free arm back, naming floor/cap or max step."""
    wanted = np.where(target > 0, scale * target if math.isfinite(scale) else np.inf, 0.0)
    rule: Rule
    for rule, clipped, bound, state_bound, what in (
        ("floor", wanted < lo, lo, floor_b, ("raised to the floor", "held back from falling more than max_step")),
        ("cap", wanted > hi, hi, cap_b, ("lowered to the cap", "held back from rising more than max_step")),
    ):
        by_state = tuple(arms[i] for i, c, b in zip(free_idx, clipped, bound) if c and b == state_bound)
        by_step = tuple(arms[i] for i, c, b in zip(free_idx, clipped, bound) if c and b != state_bound)
        if by_state:
            log.actions.append(GuardrailAction(rule, by_state, f"{', '.join(by_state)} {what[0]}"))
        if by_step:
            log.actions.append(GuardrailAction("max_step", by_step, f"{', '.join(by_step)} {what[1]}"))
    raised = tuple(arms[i] for i, t, f, b in zip(free_idx, target, fitted, lo) if t == 0 and f > b)
    if raised:
        detail = f"{', '.join(raised)} (proposed 0) carry what the bounded arms cannot"
        log.actions.append(GuardrailAction("renormalise", raised, detail))


def _warmup_weights(config: GuardrailConfig, arms: tuple[str, ...], live: NDArray[np.bool_]) -> NDArray[np.float64]:
    if config.warmup_weights is None:
        return live.astype(np.float64)
    w = np.array([config.warmup_weights.get(a, 0.0) for a in arms]) * live
    return w if w.sum() > 0 else live.astype(np.float64)


def _num_buckets(num_buckets: int | None, previous: Allocation | None) -> int:
    if previous is None:
        return check_num_buckets(DEFAULT_NUM_BUCKETS if num_buckets is None else num_buckets)
    if num_buckets is not None and num_buckets != previous.num_buckets:
        raise GuardrailError(
            f"num_buckets ({num_buckets}) differs from the previous allocation's ({previous.num_buckets})"
        )
    return previous.num_buckets


def _vector(values: ArrayLike, name: str, k: int) -> NDArray[np.float64]:
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (k,):
        raise GuardrailError(f"{name} must have shape ({k},) (one value per arm), but shape {v.shape} is given")
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise GuardrailError(f"{name} must be finite and >= 0, but {v.tolist()} is given")
    return v


def _names(arms: tuple[str, ...], mask: NDArray[np.bool_]) -> tuple[str, ...]:
    return tuple(a for a, m in zip(arms, mask) if m)


def _list(arms: tuple[str, ...], mask: NDArray[np.bool_], values: NDArray[np.float64], what: str = "") -> str:
    label = f"{what} " if what else ""
    return ", ".join(f"{a} ({label}{v:.6g})" for a, v, m in zip(arms, values.tolist(), mask) if m)
