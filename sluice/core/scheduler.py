"""What to retrain, in what order, and which retrainings share one job.

The training scheduler's decision, pure: given every (entity, model type) that serves, with
its serving version's age, the data that arrived since it was trained and what the
entity's statistics say of its reward, `plan` says which are due, why, how much each is
worth, and groups similar datasets into jobs so that the transformation runs once a group.

**Due** (any rule of its `TrainingPolicy`; a model type has one, an entity may override it):

| rule | due when |
| --- | --- |
| `every_days` | the serving version was trained at least this many days ago |
| `new_rows` | at least this many rows arrived since its training data ended |
| `reward_drop` | its reward over the window is this fraction or more below its reward just after training |

**Worth** (`expected_gain`, rewards a day, the ranking key): what the entity loses a day by
not retraining, from three sources, each in rewards a day at the entity's traffic:

- the measured decay: reward just after training minus reward now (never below 0);
- the gap to the entity's best arm, of which a retraining is assumed to recover
  `gap_share` (a model trailing for its architecture will not close all of it);
- staleness where nothing is measured yet: `assumed_decay` of its reward per
  `every_days` period of age (a model type's known drift), so an old model with no
  statistics still outranks a fresh one.

**Similar datasets** (one job, one transformation): the same model type, the same feature
set and version, and the same training window to the hour (windows cut from event times
differ by minutes between entities), so the features are computed by the same code over the
same span; and sizes within `size_ratio` of the group's smallest (a job whose
members differ 100-fold would make the small ones wait for the large one's transformation).
A job holds at most `max_group` entities and `max_job_rows` rows. Jobs are ordered by the
total worth of their members.

All arrays are columns of one table (`Fleet`): one row per (entity, model type), so ten
thousand entities with five model types each are planned in tens of milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sluice.core.errors import CoreInputError

DAY_MS = 86_400_000

# Reasons, as bits of `Plan.reasons`.
AGE, ROWS, DROP = 1, 2, 4
REASON_NAMES = {AGE: "every_days", ROWS: "new_rows", DROP: "reward_drop"}


class SchedulerInputError(CoreInputError):
    """A fleet or policy the scheduler cannot plan with; the message names the field."""


@dataclass(frozen=True)
class TrainingPolicy:
    """When a model is due for retraining: any rule that is set (None: not used)."""

    every_days: float | None = None
    new_rows: int | None = None
    reward_drop: float | None = None  # a fraction of its reward just after training, in (0, 1]

    def __post_init__(self) -> None:
        if self.every_days is not None and not self.every_days > 0:
            raise SchedulerInputError(f"every_days must be > 0, but {self.every_days!r} is given")
        if self.new_rows is not None and self.new_rows < 1:
            raise SchedulerInputError(f"new_rows must be >= 1, but {self.new_rows!r} is given")
        if self.reward_drop is not None and not 0 < self.reward_drop <= 1:
            raise SchedulerInputError(f"reward_drop must be in (0, 1], but {self.reward_drop!r} is given")


@dataclass(frozen=True)
class Policies:
    """A training policy per model type, and per-(entity, model type) overrides."""

    by_model_type: Mapping[str, TrainingPolicy]
    overrides: Mapping[tuple[str, str], TrainingPolicy] = dc_field(default_factory=dict)

    def of(self, entity: str, model_type: str) -> TrainingPolicy:
        found = self.overrides.get((entity, model_type)) or self.by_model_type.get(model_type)
        if found is None:
            raise SchedulerInputError(f"model type {model_type!r} has no training policy "
                                      f"(policies exist for {sorted(self.by_model_type)})")
        return found


@dataclass(frozen=True)
class Fleet:
    """The models that serve: one row per (entity, model type), as equal-length columns.

    `trained_at_ms`: when the serving version was trained; `rows_since`: rows that arrived
    since its training data ended; `rows`: the rows a retraining would use (its window);
    `feature_set`: "name@version"; `window_days`: its training window; `serves_per_day`:
    the entity's traffic; `reward_now`: the serving version's mean reward over the
    statistics window (NaN: not measured); `reward_trained`: its mean reward in the window
    just after it started serving (NaN: not measured); `best_reward`: the best arm's mean
    reward for the entity (NaN: not measured).
    """

    entity: Sequence[str]
    model_type: Sequence[str]
    trained_at_ms: NDArray[np.int64]
    rows_since: NDArray[np.int64]
    rows: NDArray[np.int64]
    feature_set: Sequence[str]
    window_days: NDArray[np.float64]
    serves_per_day: NDArray[np.float64]
    reward_now: NDArray[np.float64]
    reward_trained: NDArray[np.float64]
    best_reward: NDArray[np.float64]

    @classmethod
    def of(cls, entity: Sequence[str], model_type: Sequence[str], *, trained_at_ms: ArrayLike,
           rows_since: ArrayLike, rows: ArrayLike, feature_set: Sequence[str], window_days: ArrayLike,
           serves_per_day: ArrayLike, reward_now: ArrayLike | None = None, reward_trained: ArrayLike | None = None,
           best_reward: ArrayLike | None = None) -> Fleet:
        n = len(entity)
        nan = np.full(n, np.nan)
        columns = {
            "trained_at_ms": np.asarray(trained_at_ms, dtype=np.int64),
            "rows_since": np.asarray(rows_since, dtype=np.int64),
            "rows": np.asarray(rows, dtype=np.int64),
            "window_days": np.asarray(window_days, dtype=np.float64),
            "serves_per_day": np.asarray(serves_per_day, dtype=np.float64),
            "reward_now": nan if reward_now is None else np.asarray(reward_now, dtype=np.float64),
            "reward_trained": nan if reward_trained is None else np.asarray(reward_trained, dtype=np.float64),
            "best_reward": nan if best_reward is None else np.asarray(best_reward, dtype=np.float64),
        }
        for name, values in (("model_type", model_type), ("feature_set", feature_set), *columns.items()):
            if len(values) != n:
                raise SchedulerInputError(f"{name} has {len(values)} rows, but entity has {n}")
        for name in ("rows_since", "rows", "serves_per_day"):
            if np.any(columns[name] < 0):
                raise SchedulerInputError(f"{name} must be >= 0 in every row, but row "
                                          f"{int(np.argmax(columns[name] < 0))} is {columns[name].min()}")
        if np.any(~(columns["window_days"] > 0)):
            raise SchedulerInputError(f"window_days must be > 0 in every row, but row "
                                      f"{int(np.argmax(~(columns['window_days'] > 0)))} is not")
        keys = set(zip(entity, model_type))
        if len(keys) != n:
            raise SchedulerInputError("each (entity, model type) must appear once, but some appear twice")
        return cls(list(entity), list(model_type), feature_set=list(feature_set), **columns)

    def __len__(self) -> int:
        return len(self.entity)


@dataclass(frozen=True)
class Job:
    """One training job: models of one type on one feature set and window, transformed
    together. `members` are row indices of the fleet, by worth."""

    model_type: str
    feature_set: str
    window_days: float
    members: tuple[int, ...]
    rows: int
    expected_gain: float


@dataclass(frozen=True)
class Plan:
    """`due` (bool), `reasons` (bits AGE | ROWS | DROP), `expected_gain` (rewards a day) per
    fleet row; `order`: the due rows, worth first; `jobs`: the due rows grouped, worth first."""

    due: NDArray[np.bool_]
    reasons: NDArray[np.int64]
    expected_gain: NDArray[np.float64]
    order: NDArray[np.int64]
    jobs: tuple[Job, ...]

    def reason_names(self, row: int) -> list[str]:
        return [name for bit, name in REASON_NAMES.items() if self.reasons[row] & bit]


@dataclass(frozen=True)
class Grouping:
    """What makes datasets similar enough for one job (see the module docstring)."""

    size_ratio: float = 4.0
    max_group: int = 50
    max_job_rows: int = 50_000_000

    def __post_init__(self) -> None:
        if not self.size_ratio >= 1:
            raise SchedulerInputError(f"size_ratio must be >= 1, but {self.size_ratio!r} is given")
        if self.max_group < 1 or self.max_job_rows < 1:
            raise SchedulerInputError(f"max_group and max_job_rows must be >= 1, but {self.max_group!r} and "
                                      f"{self.max_job_rows!r} are given")


def plan(fleet: Fleet, policies: Policies, now_ms: int, *, gap_share: float = 0.5, assumed_decay: float = 0.02,
         grouping: Grouping | None = None) -> Plan:
    """Which models are due, why, what each is worth, and the jobs (module docstring)."""
    if not 0 <= gap_share <= 1 or not 0 <= assumed_decay <= 1:
        raise SchedulerInputError(f"gap_share and assumed_decay must be in [0, 1], but {gap_share!r} and "
                                  f"{assumed_decay!r} are given")
    grouping = grouping or Grouping()
    every, min_rows, drop_limit = _policy_columns(fleet, policies)
    age_days = (now_ms - fleet.trained_at_ms) / DAY_MS
    measured_drop = np.where(np.isnan(fleet.reward_trained) | np.isnan(fleet.reward_now), 0.0,
                             np.maximum(fleet.reward_trained - fleet.reward_now, 0.0))
    relative_drop = np.divide(measured_drop, fleet.reward_trained, out=np.zeros(len(fleet)),
                              where=fleet.reward_trained > 0)
    reasons = (np.where(age_days >= every, AGE, 0) | np.where(fleet.rows_since >= min_rows, ROWS, 0)
               | np.where(relative_drop >= drop_limit, DROP, 0)).astype(np.int64)
    due = reasons > 0

    gap = np.where(np.isnan(fleet.best_reward) | np.isnan(fleet.reward_now), 0.0,
                   np.maximum(fleet.best_reward - fleet.reward_now, 0.0))
    periods = np.where(np.isfinite(every), age_days / every, 0.0)
    reward = np.nan_to_num(fleet.reward_now, nan=0.0)
    stale = np.where(measured_drop > 0, 0.0, assumed_decay * np.maximum(periods, 0.0) * reward)
    gain = fleet.serves_per_day * (measured_drop + gap_share * gap + stale)

    rows = np.flatnonzero(due)
    order = rows[np.argsort(-gain[rows], kind="stable")]
    return Plan(due, reasons, gain, order, tuple(_group(fleet, order, gain, grouping)))


def _policy_columns(fleet: Fleet, policies: Policies) -> tuple[NDArray[np.float64], ...]:
    """Each rule's threshold per row (inf where the rule is not used), one policy lookup
    per distinct (entity, model type) override and per model type."""
    n = len(fleet)
    every, rows, drop = np.full(n, np.inf), np.full(n, np.inf), np.full(n, np.inf)
    by_type: dict[str, list[int]] = {}
    for i, (entity, model_type) in enumerate(zip(fleet.entity, fleet.model_type)):
        if (entity, model_type) in policies.overrides:
            _set(every, rows, drop, [i], policies.overrides[(entity, model_type)])
        else:
            by_type.setdefault(model_type, []).append(i)
    for model_type, idx in by_type.items():
        _set(every, rows, drop, idx, policies.of(fleet.entity[idx[0]], model_type))
    return every, rows, drop


def _set(every: NDArray[np.float64], rows: NDArray[np.float64], drop: NDArray[np.float64], idx: list[int],
         policy: TrainingPolicy) -> None:
    if policy.every_days is not None:
        every[idx] = policy.every_days
    if policy.new_rows is not None:
        rows[idx] = policy.new_rows
    if policy.reward_drop is not None:
        drop[idx] = policy.reward_drop


def _group(fleet: Fleet, order: NDArray[np.int64], gain: NDArray[np.float64], grouping: Grouping) -> list[Job]:
    """Due rows grouped by (model type, feature set, window), then cut into runs of
    compatible sizes, smallest first; jobs by total worth."""
    by_key: dict[tuple[str, str, float], list[int]] = {}
    for i in order.tolist():
        window = round(float(fleet.window_days[i]) * 24) / 24
        by_key.setdefault((fleet.model_type[i], fleet.feature_set[i], window), []).append(i)
    jobs = []
    for (model_type, feature_set, window), members in by_key.items():
        members.sort(key=lambda i: int(fleet.rows[i]))
        current: list[int] = []
        smallest = total = 0
        for i in members:
            size = int(fleet.rows[i])
            fits = (current and size <= grouping.size_ratio * max(smallest, 1) and len(current) < grouping.max_group
                    and total + size <= grouping.max_job_rows)
            if current and not fits:
                jobs.append(_job(fleet, model_type, feature_set, window, current, gain))
                current = []
            if not current:
                smallest, total = size, 0
            current.append(i)
            total += size
        if current:
            jobs.append(_job(fleet, model_type, feature_set, window, current, gain))
    jobs.sort(key=lambda j: -j.expected_gain)
    return jobs


def _job(fleet: Fleet, model_type: str, feature_set: str, window: float, members: list[int],
         gain: NDArray[np.float64]) -> Job:
    by_worth = sorted(members, key=lambda i: -gain[i])
    return Job(model_type, feature_set, window, tuple(by_worth), int(fleet.rows[members].sum()),
               float(gain[members].sum()))


class _RuleModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    every_days: float | None = Field(None, gt=0)
    new_rows: int | None = Field(None, ge=1)
    reward_drop: float | None = Field(None, gt=0, le=1)

    def policy(self) -> TrainingPolicy:
        return TrainingPolicy(self.every_days, self.new_rows, self.reward_drop)


class _OverrideModel(_RuleModel):
    entity: str = Field(min_length=1)
    model_type: str = Field(min_length=1)


class _GroupingModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    size_ratio: float = Field(4.0, ge=1)
    max_group: int = Field(50, ge=1)
    max_job_rows: int = Field(50_000_000, ge=1)


class SchedulerConfig(BaseModel):
    """The training policies file (`sluice scheduler --policies`): a policy per model type,
    per-(entity, model type) overrides, what makes datasets similar, and the worth knobs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_types: dict[str, _RuleModel] = Field(min_length=1)
    overrides: tuple[_OverrideModel, ...] = ()
    grouping: _GroupingModel = Field(default_factory=_GroupingModel)
    gap_share: float = Field(0.5, ge=0, le=1)
    assumed_decay: float = Field(0.02, ge=0, le=1)

    def policies(self) -> Policies:
        return Policies({t: r.policy() for t, r in self.model_types.items()},
                        {(o.entity, o.model_type): o.policy() for o in self.overrides})

    def grouping_rules(self) -> Grouping:
        return Grouping(self.grouping.size_ratio, self.grouping.max_group, self.grouping.max_job_rows)


def scheduler_config(data: Mapping[str, object]) -> SchedulerConfig:
    """Validate a parsed policies file, or raise SchedulerInputError naming each bad field."""
    try:
        return SchedulerConfig.model_validate(dict(data))
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]
        raise SchedulerInputError("training policies are invalid:\n  " + "\n  ".join(lines)) from None
    except TypeError as exc:
        raise SchedulerInputError(f"training policies must be a mapping of fields: {exc}") from None
