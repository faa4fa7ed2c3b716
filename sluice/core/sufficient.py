"""Mergeable sufficient statistics of rewards, per arm and per event-time hour.

`ArmStatistics` holds, for K arms, the count of observations, the sum of rewards and the
sum of squared rewards (arrays of shape (K,)). They add: partitions, hours and workers
combine by `+`, so a recomputation from raw events gives the same numbers.

`HourlyStatistics` keeps one tally per event-time hour (hour index = epoch milliseconds //
3,600,000): `ArmStatistics`, or the stream worker's `ArmCounters` (serves beside the
reward statistics). `window` sums the hours that overlap [end − length, end]; `expire`
drops hours wholly before the window. This is the one implementation of the window: the
worker, the tests and the tools all use it. Both are plain functions of the state and the
times passed in: no clock is read here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sluice.core.errors import CoreInputError

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


class StatisticsInputError(CoreInputError):
    """Arrays or times that do not describe valid observations."""


@dataclass(frozen=True)
class ArmStatistics:
    """count, total and total_sq per arm, each shape (K,)."""

    count: NDArray[np.float64]
    total: NDArray[np.float64]
    total_sq: NDArray[np.float64]

    def __post_init__(self) -> None:
        shapes = {self.count.shape, self.total.shape, self.total_sq.shape}
        if len(shapes) != 1 or self.count.ndim != 1:
            raise StatisticsInputError(f"count, total and total_sq must be 1-D of one shape, got {sorted(shapes)}")

    @classmethod
    def zeros(cls, num_arms: int) -> ArmStatistics:
        if num_arms < 1:
            raise StatisticsInputError(f"num_arms must be at least 1, but {num_arms} is given")
        return cls(np.zeros(num_arms), np.zeros(num_arms), np.zeros(num_arms))

    @classmethod
    def of(cls, count: ArrayLike, total: ArrayLike, total_sq: ArrayLike | None = None) -> ArmStatistics:
        """From per-arm arrays; for binary rewards total_sq defaults to total (0² = 0, 1² = 1)."""
        c = np.asarray(count, dtype=np.float64)
        t = np.asarray(total, dtype=np.float64)
        q = t.copy() if total_sq is None else np.asarray(total_sq, dtype=np.float64)
        for name, arr in (("count", c), ("total", t), ("total_sq", q)):
            if not np.all(np.isfinite(arr)):
                raise StatisticsInputError(f"{name} must be finite, but {arr.tolist()} is given")
        if (c < 0).any():
            raise StatisticsInputError(f"count must be >= 0, but {c.tolist()} is given")
        return cls(c, t, q)

    @classmethod
    def from_rewards(cls, arms: ArrayLike, rewards: ArrayLike, num_arms: int) -> ArmStatistics:
        """Statistics of observations `rewards[i]` of arm `arms[i]` (arrays of shape (n,))."""
        a = np.asarray(arms, dtype=np.int64)
        r = np.asarray(rewards, dtype=np.float64)
        if a.shape != r.shape or a.ndim != 1:
            raise StatisticsInputError(f"arms and rewards must be 1-D of one length, got {a.shape} and {r.shape}")
        if a.size and (a.min() < 0 or a.max() >= num_arms):
            raise StatisticsInputError(f"arm indices must be in [0, {num_arms}), got {int(a.min())}..{int(a.max())}")
        if not np.all(np.isfinite(r)):
            raise StatisticsInputError("rewards must be finite")
        return cls(
            np.bincount(a, minlength=num_arms).astype(np.float64),
            np.bincount(a, weights=r, minlength=num_arms),
            np.bincount(a, weights=r * r, minlength=num_arms),
        )

    @property
    def num_arms(self) -> int:
        return int(self.count.size)

    @property
    def mean(self) -> NDArray[np.float64]:
        """Sample mean per arm; NaN where an arm has no observation."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.total / self.count, np.nan)

    @property
    def variance(self) -> NDArray[np.float64]:
        """Unbiased sample variance per arm; NaN below two observations."""
        with np.errstate(invalid="ignore", divide="ignore"):
            ss = self.total_sq - self.total * self.total / self.count
            return np.where(self.count > 1, np.maximum(ss, 0.0) / (self.count - 1), np.nan)

    def __add__(self, other: ArmStatistics) -> ArmStatistics:
        if other.num_arms != self.num_arms:
            raise StatisticsInputError(f"cannot add statistics of {self.num_arms} and {other.num_arms} arms")
        return ArmStatistics(self.count + other.count, self.total + other.total, self.total_sq + other.total_sq)

    def with_arms(self, num_arms: int) -> ArmStatistics:
        """The same statistics padded with empty arms (a new arm joined the experiment)."""
        if num_arms < self.num_arms:
            raise StatisticsInputError(f"cannot shrink statistics from {self.num_arms} to {num_arms} arms")
        pad = num_arms - self.num_arms
        return ArmStatistics(*(np.pad(a, (0, pad)) for a in (self.count, self.total, self.total_sq)))

    def to_lists(self) -> list[list[float]]:
        return [self.count.tolist(), self.total.tolist(), self.total_sq.tolist()]

    @classmethod
    def from_lists(cls, lists: list[list[float]]) -> ArmStatistics:
        return cls.of(*lists)


class Tally(Protocol):
    """What `HourlyStatistics` needs of the statistics it keeps per hour: per-arm values
    that add, and can grow by empty arms."""

    @property
    def num_arms(self) -> int: ...

    def __add__(self: T, other: T) -> T: ...

    def with_arms(self: T, num_arms: int) -> T: ...


T = TypeVar("T", bound=Tally)


# Latency histogram of the health counters: bucket i holds [LATENCY_EDGES_MS[i],
# LATENCY_EDGES_MS[i + 1]) ms, half an octave wide, from under 1 ms to over 131 s.
LATENCY_EDGES_MS = np.concatenate([[0.0], 2.0 ** (np.arange(35) / 2)])


@dataclass(frozen=True)
class ArmCounters:
    """What the stream worker counts per arm in a span of time, as one array of shape
    (len(FIELDS), K):

    - `serves` (every logged serve, in the experiment or not), and over the in-experiment
      serves the reward statistics `count`, `total`, `total_sq`;
    - for the sample-ratio test, over in-experiment serves whose weight table is known:
      `srm_observed` (this arm's serves) and `srm_expected` (the sum of the weight the table
      in force gave this arm, over all such serves);
    - health reported with the serves' outcomes: `outcomes` (reports saying whether the
      request failed), `errors`, `latency_n` (reports with a latency), `slow` (latencies
      above the spec's threshold), and a latency histogram `latency_0…` over LATENCY_EDGES_MS.

    Fields are only ever appended (stored hours of an older layout read as zeros in new ones).
    """

    values: NDArray[np.float64]

    FIELDS: ClassVar[tuple[str, ...]] = (
        "serves", "count", "total", "total_sq", "srm_observed", "srm_expected", "outcomes", "errors",
        "latency_n", "slow", *(f"latency_{i}" for i in range(len(LATENCY_EDGES_MS))),
    )
    SERVES, COUNT, TOTAL, TOTAL_SQ, SRM_OBSERVED, SRM_EXPECTED, OUTCOMES, ERRORS, LATENCY_N, SLOW = range(10)
    LATENCY = 10  # first histogram row

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[0] != len(self.FIELDS):
            raise StatisticsInputError(f"counters must have shape ({len(self.FIELDS)}, K), got {self.values.shape}")

    @classmethod
    def zeros(cls, num_arms: int) -> ArmCounters:
        if num_arms < 1:
            raise StatisticsInputError(f"num_arms must be at least 1, but {num_arms} is given")
        return cls(np.zeros((len(cls.FIELDS), num_arms)))

    @property
    def num_arms(self) -> int:
        return int(self.values.shape[1])

    @property
    def serves(self) -> NDArray[np.float64]:
        return self.values[self.SERVES]

    @property
    def rewards(self) -> ArmStatistics:
        """The reward statistics of the in-experiment serves."""
        v = self.values
        return ArmStatistics(v[self.COUNT], v[self.TOTAL], v[self.TOTAL_SQ])

    def __add__(self, other: ArmCounters) -> ArmCounters:
        if other.num_arms != self.num_arms:
            raise StatisticsInputError(f"cannot add counters of {self.num_arms} and {other.num_arms} arms")
        return ArmCounters(self.values + other.values)

    def with_arms(self, num_arms: int) -> ArmCounters:
        """The same counters padded with empty arms (a new arm joined the experiment)."""
        if num_arms < self.num_arms:
            raise StatisticsInputError(f"cannot shrink counters from {self.num_arms} to {num_arms} arms")
        return ArmCounters(np.pad(self.values, ((0, 0), (0, num_arms - self.num_arms))))

    def to_lists(self) -> list[list[float]]:
        return self.values.tolist()

    @classmethod
    def from_lists(cls, lists: list[list[float]]) -> ArmCounters:
        return cls(np.asarray(lists, dtype=np.float64))

    def latency_quantile(self, q: float) -> NDArray[np.float64]:
        """Per arm, the `q` latency quantile in ms from the histogram (the upper edge of the
        bucket where the cumulative share reaches q; NaN without latencies)."""
        hist = self.values[self.LATENCY:]
        total = hist.sum(axis=0)
        upper = np.r_[LATENCY_EDGES_MS[1:], np.inf]
        out = np.full(self.num_arms, np.nan)
        for arm in np.flatnonzero(total > 0):
            cum = np.cumsum(hist[:, arm]) / total[arm]
            out[arm] = upper[int(np.searchsorted(cum, q - 1e-12))]
        return out


def latency_bucket(latency_ms: float) -> int:
    """The histogram bucket of a latency (negative ones count in the first)."""
    return max(0, int(np.searchsorted(LATENCY_EDGES_MS, latency_ms, side="right")) - 1)


@dataclass(frozen=True)
class HourlyStatistics(Generic[T]):
    """Per-arm statistics in event-time hourly buckets: hour index → a `Tally`
    (`ArmStatistics`, or the worker's `ArmCounters`). `zero` is the empty tally of the
    arms; every hour has as many arms as `zero`."""

    zero: T
    hours: Mapping[int, T] = field(default_factory=dict)

    @classmethod
    def of_rewards(cls, num_arms: int) -> HourlyStatistics[ArmStatistics]:
        """Empty hourly reward statistics of `num_arms` arms."""
        return HourlyStatistics(ArmStatistics.zeros(num_arms))

    @property
    def num_arms(self) -> int:
        return self.zero.num_arms

    def add(self, hour: int, stats: T) -> HourlyStatistics[T]:
        """A new state with `stats` added to `hour`."""
        if stats.num_arms != self.num_arms:
            raise StatisticsInputError(f"cannot add statistics of {stats.num_arms} arms to hours of {self.num_arms}")
        hours = dict(self.hours)
        hours[hour] = hours[hour] + stats if hour in hours else stats
        return HourlyStatistics(self.zero, hours)

    def add_rewards(self: HourlyStatistics[ArmStatistics], arms: ArrayLike, rewards: ArrayLike,
                    times_ms: ArrayLike) -> HourlyStatistics[ArmStatistics]:
        """A new state with observations (arm, reward, event time in epoch ms) added."""
        a = np.asarray(arms, dtype=np.int64)
        r = np.asarray(rewards, dtype=np.float64)
        h = np.asarray(times_ms, dtype=np.int64) // HOUR_MS
        state = self
        for hour in np.unique(h):
            sel = h == hour
            state = state.add(int(hour), ArmStatistics.from_rewards(a[sel], r[sel], self.num_arms))
        return state

    def merge(self, other: HourlyStatistics[T]) -> HourlyStatistics[T]:
        """The state holding the observations of both (order does not matter)."""
        if other.num_arms != self.num_arms:
            raise StatisticsInputError(f"cannot merge statistics of {self.num_arms} and {other.num_arms} arms")
        state = self
        for hour, stats in other.hours.items():
            state = state.add(hour, stats)
        return state

    def with_arms(self, num_arms: int) -> HourlyStatistics[T]:
        """The same hours with empty arms appended (arms keep their index)."""
        if num_arms == self.num_arms:
            return self
        return HourlyStatistics(self.zero.with_arms(num_arms), {h: s.with_arms(num_arms) for h, s in self.hours.items()})

    def window(self, end_ms: int, length_ms: int = 7 * DAY_MS) -> T:
        """Sum of the hours that overlap [end_ms − length_ms, end_ms]."""
        first, last = window_hours(end_ms, length_ms)
        total = self.zero
        for hour, stats in self.hours.items():
            if first <= hour <= last:
                total = total + stats
        return total

    def first_hour(self, end_ms: int, length_ms: int = 7 * DAY_MS) -> int:
        """The oldest hour the window of `end_ms` holds."""
        return window_hours(end_ms, length_ms)[0]

    def in_window(self, time_ms: int, end_ms: int, length_ms: int = 7 * DAY_MS) -> bool:
        """Whether an event at `time_ms` falls in an hour the window of `end_ms` still holds."""
        return time_ms // HOUR_MS >= window_hours(end_ms, length_ms)[0]

    def expire(self, end_ms: int, length_ms: int = 7 * DAY_MS) -> HourlyStatistics[T]:
        """A new state without the hours that ended before the window started."""
        first, _ = window_hours(end_ms, length_ms)
        if all(h >= first for h in self.hours):
            return self
        return HourlyStatistics(self.zero, {h: s for h, s in self.hours.items() if h >= first})

    def expired_hours(self, end_ms: int, length_ms: int = 7 * DAY_MS) -> list[int]:
        """The hours `expire` would drop."""
        first, _ = window_hours(end_ms, length_ms)
        return sorted(h for h in self.hours if h < first)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able form: {"num_arms": K, "hours": {"hour": tally.to_lists()}}."""
        return {"num_arms": self.num_arms, "hours": {str(h): s.to_lists() for h, s in sorted(self.hours.items())}}  # type: ignore[attr-defined]

    @classmethod
    def from_dict(cls, data: Mapping[str, object], kind: type = ArmStatistics) -> HourlyStatistics[Any]:
        """The state `to_dict` wrote; `kind` is the tally class (ArmStatistics or ArmCounters)."""
        hours = data["hours"]
        if not isinstance(hours, Mapping):
            raise StatisticsInputError(f"hours must be a mapping, but {type(hours).__name__} is given")
        zero = kind.zeros(int(data["num_arms"]))  # type: ignore[call-overload]
        return cls(zero, {int(h): kind.from_lists(v) for h, v in hours.items()})


def window_hours(end_ms: int, length_ms: int) -> tuple[int, int]:
    """First and last hour index overlapping [end_ms − length_ms, end_ms]."""
    if length_ms <= 0:
        raise StatisticsInputError(f"window length must be > 0 ms, but {length_ms} is given")
    start = end_ms - length_ms
    # hour h covers [h·H, (h+1)·H): it overlaps iff (h+1)·H > start and h·H <= end
    return start // HOUR_MS, end_ms // HOUR_MS
