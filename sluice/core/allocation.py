"""Bucket allocations: which arm owns each of the N hash buckets of an experiment.

Weights become whole buckets (`quantize_weights`, largest remainder), so an arm's published
weight is exactly its bucket count / N and the propensity logged with a serve is the true
assignment probability. When weights change, `reallocate` moves as few buckets as possible:
the number of buckets that change arm equals the total-variation distance between the old
and new bucket counts, so a returning unit keeps its arm unless its arm had to shrink.

Because the mapping then depends on history, an `Allocation` is published as compact ranges
per arm (sorted, disjoint, half-open `[start, end)` bucket ranges). Any reader, in any
language, maps a bucket to an arm from the latest ranges alone.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sluice.core.errors import CoreInputError

DEFAULT_NUM_BUCKETS = 10_000
MAX_NUM_BUCKETS = 2**31 - 1  # the Avro schemas carry buckets as int

BucketRange = tuple[int, int]
"""A half-open range `[start, end)` of bucket indices."""


class AllocationError(CoreInputError):
    """An allocation or a weight vector that cannot describe a bucket split."""


def check_num_buckets(num_buckets: int) -> int:
    """Return `num_buckets` if it is an integer in [1, 2**31 - 1], else raise AllocationError."""
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, (int, np.integer)):
        raise AllocationError(f"num_buckets must be an integer, but {num_buckets!r} is given")
    if not 1 <= num_buckets <= MAX_NUM_BUCKETS:
        raise AllocationError(f"num_buckets must be in [1, {MAX_NUM_BUCKETS}], but {num_buckets} is given")
    return int(num_buckets)


@dataclass(frozen=True)
class Allocation:
    """Which arm owns each bucket, as sorted disjoint half-open ranges per arm.

    `ranges[i]` lists arm i's ranges in increasing order; adjacent ranges of one arm are
    merged, and all ranges together cover `[0, num_buckets)` exactly once. An arm may own no
    bucket (weight 0). Build one with `Allocation.from_ranges` (validates and merges),
    `contiguous`, `allocate` or `reallocate`.
    """

    num_buckets: int
    ranges: tuple[tuple[BucketRange, ...], ...]
    _starts: list[int] = field(init=False, repr=False, compare=False)
    _owners: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_num_buckets(self.num_buckets)
        pieces: list[tuple[int, int, int]] = []
        for arm, arm_ranges in enumerate(self.ranges):
            previous_end = -1
            for start, end in arm_ranges:
                if not (0 <= start < end <= self.num_buckets):
                    raise AllocationError(
                        f"ranges[{arm}] has range [{start}, {end}), expected 0 <= start < end <= "
                        f"num_buckets ({self.num_buckets})"
                    )
                if start <= previous_end:
                    raise AllocationError(
                        f"ranges[{arm}] must be sorted, disjoint and merged, but [{start}, {end}) "
                        f"starts at or before the end of the previous range ({previous_end})"
                    )
                previous_end = end
                pieces.append((start, end, arm))
        if not self.ranges:
            raise AllocationError("ranges must list at least one arm")
        pieces.sort()
        cursor = 0
        for start, end, arm in pieces:
            if start != cursor:
                what = "overlaps another arm's range" if start < cursor else f"leaves [{cursor}, {start}) unowned"
                raise AllocationError(f"ranges[{arm}] range [{start}, {end}) {what}")
            cursor = end
        if cursor != self.num_buckets:
            raise AllocationError(f"ranges leave [{cursor}, {self.num_buckets}) unowned")
        object.__setattr__(self, "_starts", [p[0] for p in pieces])
        object.__setattr__(self, "_owners", [p[2] for p in pieces])

    @classmethod
    def from_ranges(cls, ranges: Sequence[Sequence[Sequence[int]]], num_buckets: int) -> Allocation:
        """Build from per-arm lists of `[start, end)` pairs (any order; touching ranges merge).

        Raises AllocationError naming the arm and range when the ranges overlap, leave a
        bucket unowned or fall outside `[0, num_buckets)`.
        """
        normalised = []
        for arm, arm_ranges in enumerate(ranges):
            pairs = []
            for r in arm_ranges:
                if len(r) != 2:
                    raise AllocationError(f"ranges[{arm}] has {list(r)!r}, expected a [start, end) pair")
                pairs.append((int(r[0]), int(r[1])))
            normalised.append(_merge(sorted(pairs)))
        return cls(check_num_buckets(num_buckets), tuple(normalised))

    @classmethod
    def contiguous(cls, counts: ArrayLike, num_buckets: int | None = None) -> Allocation:
        """Arm 0 owns the first `counts[0]` buckets, arm 1 the next `counts[1]`, and so on."""
        c = _as_counts(counts, "counts")
        total = int(c.sum())
        if num_buckets is not None and total != num_buckets:
            raise AllocationError(f"counts must sum to num_buckets ({num_buckets}), but they sum to {total}")
        edges = np.concatenate([[0], np.cumsum(c)]).tolist()
        return cls(total, tuple(((edges[i], edges[i + 1]),) if c[i] else () for i in range(len(c))))

    @property
    def num_arms(self) -> int:
        return len(self.ranges)

    @property
    def counts(self) -> NDArray[np.int64]:
        """Buckets owned per arm, shape (num_arms,)."""
        return np.array([sum(e - s for s, e in r) for r in self.ranges], dtype=np.int64)

    @property
    def shares(self) -> NDArray[np.float64]:
        """Published weights: bucket count / num_buckets per arm, shape (num_arms,); sums to 1."""
        return self.counts / self.num_buckets

    @property
    def num_ranges(self) -> int:
        """Total number of ranges, a measure of fragmentation (num_arms at best)."""
        return len(self._starts)

    def arm_of(self, bucket: int) -> int:
        """The arm index owning `bucket` (0 <= bucket < num_buckets), by bisection over ranges."""
        if not 0 <= bucket < self.num_buckets:
            raise AllocationError(f"bucket must be in [0, {self.num_buckets}), but {bucket} is given")
        return self._owners[bisect.bisect_right(self._starts, bucket) - 1]

    def dense(self) -> NDArray[np.int32]:
        """Arm index of every bucket, shape (num_buckets,): a lookup table for batch use."""
        owner = np.empty(self.num_buckets, dtype=np.int32)
        for arm, arm_ranges in enumerate(self.ranges):
            for start, end in arm_ranges:
                owner[start:end] = arm
        return owner

    def to_lists(self) -> list[list[list[int]]]:
        """Ranges as plain lists, `[[start, end], ...]` per arm, for JSON and Avro."""
        return [[[s, e] for s, e in r] for r in self.ranges]

    def to_arm_weights(self, arms: Sequence[str]) -> list[dict[str, object]]:
        """The `arms` field of a WeightTable record (Avro `ArmWeight`): per arm its name,
        weight (= bucket share), bucket count and ranges as `{"start", "end"}` records."""
        if len(arms) != self.num_arms:
            raise AllocationError(f"arms has {len(arms)} names but the allocation has {self.num_arms} arms")
        return [
            {
                "arm": name,
                "weight": count / self.num_buckets,
                "buckets": count,
                "ranges": [{"start": s, "end": e} for s, e in arm_ranges],
            }
            for name, count, arm_ranges in zip(arms, self.counts.tolist(), self.ranges)
        ]

    @classmethod
    def from_arm_weights(
        cls, arm_weights: Sequence[Mapping[str, Any]], num_buckets: int
    ) -> tuple[tuple[str, ...], Allocation]:
        """Arm names and allocation from a WeightTable's `arms` (the reverse of
        `to_arm_weights`). Checks that every weight and bucket count matches its ranges."""
        arms = tuple(str(a["arm"]) for a in arm_weights)
        allocation = cls.from_ranges([[(r["start"], r["end"]) for r in a["ranges"]] for a in arm_weights], num_buckets)
        for name, a, count in zip(arms, arm_weights, allocation.counts.tolist()):
            if a["buckets"] != count or a["weight"] != count / allocation.num_buckets:
                raise AllocationError(
                    f"arm {name!r} claims {a['buckets']} buckets and weight {a['weight']}, but its ranges hold "
                    f"{count} buckets (weight {count / allocation.num_buckets})"
                )
        return arms, allocation

    def with_arms(self, num_arms: int) -> Allocation:
        """The same buckets with arms appended (owning nothing) up to `num_arms`."""
        if num_arms < self.num_arms:
            raise AllocationError(
                f"num_arms must be >= {self.num_arms} (arms are never removed), but {num_arms} is given"
            )
        return Allocation(self.num_buckets, self.ranges + ((),) * (num_arms - self.num_arms))


def quantize_weights(
    weights: ArrayLike,
    num_buckets: int = DEFAULT_NUM_BUCKETS,
    *,
    lower: ArrayLike | None = None,
    upper: ArrayLike | None = None,
) -> NDArray[np.int64]:
    """Whole buckets per arm for `weights`, by the largest-remainder method.

    weights: shape (K,), finite, >= 0, positive sum; normalised by their sum.
    lower, upper: optional integer bucket bounds per arm, shape (K,); the result respects
    them (arms whose exact share falls outside are clamped, and the rounding makes up the
    difference among the others). An arm of weight exactly 0 gets 0 buckets.
    Returns counts of shape (K,) summing to `num_buckets`. Each arm gets the floor or the
    ceiling of its exact share `w * N` when no bound interferes; ties go to the lower arm
    index, so the result is deterministic.
    """
    n = check_num_buckets(num_buckets)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise AllocationError(f"weights must be a non-empty 1-D array, but shape {w.shape} is given")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise AllocationError(f"weights must be finite and >= 0, but {w.tolist()} is given")
    if w.sum() <= 0:
        raise AllocationError(f"weights must have a positive sum, but {w.tolist()} is given")
    lo = np.zeros(w.size, dtype=np.int64) if lower is None else _as_counts(lower, "lower", w.size)
    hi = np.full(w.size, n, dtype=np.int64) if upper is None else _as_counts(upper, "upper", w.size)
    hi = np.where(w == 0, np.minimum(hi, lo), hi)  # a zero weight gets nothing beyond its lower bound
    if np.any(lo > hi) or lo.sum() > n or hi.sum() < n:
        raise AllocationError(
            f"bucket bounds cannot hold: lower {lo.tolist()} and upper {hi.tolist()} must satisfy "
            f"lower <= upper and sum(lower) <= {n} <= sum(upper)"
        )
    exact = w / w.sum() * n
    counts = np.clip(np.floor(exact).astype(np.int64), lo, hi)
    order_index = np.arange(w.size)
    short = n - int(counts.sum())
    while short != 0:
        remainder = exact - counts
        if short > 0:
            eligible = np.flatnonzero(counts < hi)
            rank = eligible[np.lexsort((order_index[eligible], -remainder[eligible]))]
            chosen = rank[:short]
            counts[chosen] += 1
        else:
            eligible = np.flatnonzero(counts > lo)
            rank = eligible[np.lexsort((order_index[eligible], remainder[eligible]))]
            chosen = rank[:-short]
            counts[chosen] -= 1
        short = n - int(counts.sum())
    return counts


def churn(old: Allocation, new: Allocation) -> int:
    """Number of buckets whose arm differs between two allocations of the same buckets."""
    if old.num_buckets != new.num_buckets:
        raise AllocationError(f"num_buckets differ: {old.num_buckets} and {new.num_buckets}")
    return int(np.count_nonzero(old.dense() != new.dense()))


def minimum_churn(old_counts: ArrayLike, new_counts: ArrayLike) -> int:
    """The least number of buckets that must change arm: total-variation distance in buckets."""
    a, b = np.asarray(old_counts, dtype=np.int64), np.asarray(new_counts, dtype=np.int64)
    size = max(a.size, b.size)
    a, b = np.pad(a, (0, size - a.size)), np.pad(b, (0, size - b.size))
    return int(np.maximum(a - b, 0).sum())


def allocate(
    weights: ArrayLike, num_buckets: int = DEFAULT_NUM_BUCKETS, previous: Allocation | None = None
) -> Allocation:
    """Quantize `weights` (shape (K,)) to buckets and lay them out: contiguously when there
    is no `previous` allocation, else by `reallocate` with minimum churn."""
    if previous is not None and previous.num_buckets != num_buckets:
        raise AllocationError(
            f"num_buckets ({num_buckets}) differs from the previous allocation's ({previous.num_buckets})"
        )
    counts = quantize_weights(weights, num_buckets)
    if previous is None:
        return Allocation.contiguous(counts, num_buckets)
    return reallocate(previous, counts)


def reallocate(previous: Allocation, target_counts: ArrayLike) -> Allocation:
    """Move buckets from `previous` to reach `target_counts` (shape (K,), summing to N, K >=
    previous.num_arms; new arms are appended) with the least possible churn.

    Only arms that shrink give buckets up, and every bucket they give up goes to an arm that
    grows, so exactly `minimum_churn(previous.counts, target_counts)` buckets change arm and
    every other bucket keeps its arm. To keep the ranges compact, a shrinking arm first gives
    up whole ranges (smallest first) and then trims one range at an end, preferring an end
    that touches a growing arm; growing arms first take freed buckets next to their own.
    """
    target = _as_counts(target_counts, "target_counts")
    if target.size < previous.num_arms:
        raise AllocationError(
            f"target_counts must have at least {previous.num_arms} arms (arms are never removed), "
            f"but it has {target.size}"
        )
    if int(target.sum()) != previous.num_buckets:
        raise AllocationError(
            f"target_counts must sum to num_buckets ({previous.num_buckets}), but they sum to {int(target.sum())}"
        )
    prev = previous.with_arms(target.size)
    current = prev.counts
    if np.array_equal(current, target):
        return prev
    owner = prev.dense()
    need = np.maximum(target - current, 0)  # buckets each growing arm still has to take

    for arm in np.flatnonzero(current > target):
        _release(owner, prev.ranges[arm], int(current[arm] - target[arm]), need)

    # Freed buckets next to a growing arm's own buckets go to it first, so its ranges merge.
    n = owner.size
    for start, end in _runs(owner == -1):
        left = int(owner[start - 1]) if start > 0 else -1
        if left >= 0 and need[left] > 0:
            take = min(int(need[left]), end - start)
            owner[start : start + take] = left
            need[left] -= take
            start += take
        right = int(owner[end]) if end < n else -1
        if start < end and right >= 0 and need[right] > 0:
            take = min(int(need[right]), end - start)
            owner[end - take : end] = right
            need[right] -= take

    # The rest: largest free runs to the arms that still need the most, split when needed.
    runs = sorted(_runs(owner == -1), key=lambda r: (r[0] - r[1], r[0]))
    for start, end in runs:
        while start < end:
            arm = int(np.argmax(need))
            take = min(int(need[arm]), end - start)
            owner[start : start + take] = arm
            need[arm] -= take
            start += take
    return _from_dense(owner, target.size)


def _release(
    owner: NDArray[np.int32], arm_ranges: tuple[BucketRange, ...], surplus: int, need: NDArray[np.int64]
) -> None:
    """Mark `surplus` buckets of one shrinking arm as free (-1) in `owner`."""
    kept = []
    for start, end in sorted(arm_ranges, key=lambda r: (r[1] - r[0], r[0])):
        if end - start <= surplus:
            owner[start:end] = -1
            surplus -= end - start
        else:
            kept.append((start, end))
    if surplus == 0:
        return
    n = owner.size

    def touches_grower(start: int, end: int, side: str) -> bool:
        j = start - 1 if side == "left" else end
        return 0 <= j < n and owner[j] >= 0 and need[owner[j]] > 0

    # Prefer an end touching a growing arm (the freed buckets merge into it), then the
    # smallest range (so it is the next to go whole), then the right end.
    candidates = [
        (not touches_grower(s, e, side), e - s, side != "right", s, side) for s, e in kept for side in ("right", "left")
    ]
    *_, start, side = min(candidates)
    end = next(e for s, e in kept if s == start)
    if side == "right":
        owner[end - surplus : end] = -1
    else:
        owner[start : start + surplus] = -1


def _runs(mask: NDArray[np.bool_]) -> list[BucketRange]:
    """Half-open runs of True in a boolean array."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(edges[i]), int(edges[i + 1])) for i in range(0, edges.size, 2)]


def _from_dense(owner: NDArray[np.int32], num_arms: int) -> Allocation:
    change = np.flatnonzero(owner[1:] != owner[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [owner.size]])
    per_arm: list[list[BucketRange]] = [[] for _ in range(num_arms)]
    for s, e, a in zip(starts.tolist(), ends.tolist(), owner[starts].tolist()):
        per_arm[a].append((s, e))
    return Allocation(int(owner.size), tuple(tuple(r) for r in per_arm))


def _merge(pairs: list[BucketRange]) -> tuple[BucketRange, ...]:
    merged: list[BucketRange] = []
    for start, end in pairs:
        if merged and start == merged[-1][1]:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return tuple(merged)


def _as_counts(values: ArrayLike, name: str, size: int | None = None) -> NDArray[np.int64]:
    a = np.asarray(values)
    if a.ndim != 1 or (size is not None and a.size != size) or a.size == 0:
        expected = f"shape ({size},)" if size is not None else "a non-empty 1-D array"
        raise AllocationError(f"{name} must be {expected}, but shape {a.shape} is given")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise AllocationError(f"{name} must be whole bucket counts, but {a.tolist()} is given")
    elif a.dtype.kind not in "iu":
        raise AllocationError(f"{name} must be integers, but dtype {a.dtype} is given")
    counts = a.astype(np.int64)
    if np.any(counts < 0):
        raise AllocationError(f"{name} must be >= 0, but {counts.tolist()} is given")
    return counts
