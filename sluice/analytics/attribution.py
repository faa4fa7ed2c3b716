"""The stream worker's attribution rules in ClickHouse: what report, export and offline
evaluation read, so that their numbers are the worker's.

The rules themselves are SQL, once, in the parameterized views of migration 3
(`sluice.clickhouse.migrations`); each takes the experiment id and reads the rules from the
latest version of its spec in the `experiments` table, which the sink fills from the
experiments topic:

- `attributed_serves(experiment)`: one row per serve that counts, with its attributed
  reward (`reward`, `rewarded`, `reward_events`): the evaluation dataset;
- `attributed_hourly(experiment)`: per (entity, arm, hour of the serve) the worker's
  counters `serves`, `count`, `sum`, `sum_sq`;
- `attributed_window(experiment)`: those summed over the window the worker holds now;
- `attribution_spec(experiment)`: the rules in force (reward name and type, attribution
  window, window length, the arms of every version).

This module reads them (the export reads `attributed_serves` in `sluice.analytics.export`;
off-policy evaluation takes `evaluation_log`); it holds no rule of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sluice.core.spec import ExperimentSpec, SpecError, spec_from_record
from sluice.errors import SluiceError

if TYPE_CHECKING:
    from sluice.core.ope import BanditLog

HOUR_MS = 3_600_000
STATISTICS = ("serves", "count", "sum", "sum_sq")  # the worker's ArmStatistics: serves, count, sum, sum_squares


class AttributionError(SluiceError):
    """The rules cannot be applied: the experiment has no spec in ClickHouse, or its spec
    does not validate; the message says which."""


def experiment_spec(client: Any, experiment: str, database: str = "sluice") -> ExperimentSpec:
    """The latest version of `experiment`'s spec that the sink landed: the rules the views apply."""
    rows = client.query(f"SELECT spec_json FROM {database}.attribution_spec(experiment = {{e:String}})",
                        parameters={"e": experiment}).result_rows
    if not rows:
        known = [r[0] for r in client.query(f"SELECT DISTINCT experiment_id FROM {database}.experiments").result_rows]
        raise AttributionError(
            f"experiment {experiment!r} has no spec in {database}.experiments (experiments there: "
            f"{', '.join(sorted(known)) or 'none'}); `sluice sink` lands the experiments topic there")
    try:
        return spec_from_record({"spec_json": rows[0][0]})
    except SpecError as exc:
        raise AttributionError(f"the spec of experiment {experiment!r} in {database}.experiments does not validate: "
                               f"{exc}") from exc


@dataclass(frozen=True)
class Hourly:
    """The attributed counters of one entity per hour of the serve: `hours` (H,) epoch ms of
    each hour's start, ascending; `arms` (K,); `serves`, `count`, `sum`, `sum_sq` (H, K)."""

    arms: tuple[str, ...]
    hours: np.ndarray
    serves: np.ndarray
    count: np.ndarray
    sum: np.ndarray
    sum_sq: np.ndarray


def hourly(client: Any, experiment: str, database: str = "sluice", *,
           arms: dict[str, list[str]] | None = None) -> dict[str, Hourly]:
    """Entity → its attributed hourly counters. `arms[entity]` gives the order of its arms
    (arms the data has beyond those follow, in name order)."""
    rows = client.query(
        f"SELECT entity, arm, toUnixTimestamp(hour), serves, count, sum, sum_sq "
        f"FROM {database}.attributed_hourly(experiment = {{e:String}}) ORDER BY entity, hour, arm",
        parameters={"e": experiment}).result_rows
    out: dict[str, Hourly] = {}
    for entity in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == entity]
        order = list((arms or {}).get(entity, []))
        order += sorted({r[1] for r in mine} - set(order))
        hours = sorted({r[2] for r in mine})
        hi, ai = {h: i for i, h in enumerate(hours)}, {a: i for i, a in enumerate(order)}
        values = np.zeros((4, len(hours), len(order)))
        for _, arm, hour, *stats in mine:
            values[:, hi[hour], ai[arm]] = stats
        out[entity] = Hourly(tuple(order), np.asarray(hours, dtype=float) * 1000, *values)
    return out


@dataclass(frozen=True)
class WindowStatistics:
    """Per arm (serves, count, sum, sum_sq) over [window_start_ms, window_end_ms]: the
    hours from the start's to the end's, as the worker's tables give them."""

    window_start_ms: int
    window_end_ms: int
    arms: dict[str, tuple[int, int, float, float]]


def window_statistics(client: Any, experiment: str, database: str = "sluice") -> dict[str, WindowStatistics]:
    """Entity → the attributed statistics over the window the spec gives (`window_days`
    up to the entity's newest event time), leaving out arms with no serves in it."""
    rows = client.query(
        f"SELECT entity, arm, serves, count, sum, sum_sq, toUnixTimestamp64Milli(window_start), "
        f"toUnixTimestamp64Milli(window_end) FROM {database}.attributed_window(experiment = {{e:String}}) "
        f"WHERE serves > 0 ORDER BY entity, arm", parameters={"e": experiment}).result_rows
    out: dict[str, WindowStatistics] = {}
    for entity, arm, serves, count, s, ss, start, end in rows:
        out.setdefault(entity, WindowStatistics(start, end, {})).arms[arm] = (serves, count, s, ss)
    return out


def statistics_between(client: Any, experiment: str, entity: str, start_ms: int, end_ms: int,
                       database: str = "sluice") -> dict[str, tuple[int, int, float, float]]:
    """Arm → (serves, count, sum, sum_sq) of `entity` summed over the hours from the one
    holding `start_ms` to the one holding `end_ms` (a weight table's window_start and
    window_end), leaving out arms with no serves."""
    rows = client.query(
        f"SELECT arm, sum(serves), sum(count), sum(sum), sum(sum_sq) "
        f"FROM {database}.attributed_hourly(experiment = {{e:String}}) "
        f"WHERE entity = {{entity:String}} AND toUnixTimestamp(hour) >= intDiv({{start:Int64}}, 3600000) * 3600 "
        f"AND toUnixTimestamp(hour) <= intDiv({{end:Int64}}, 3600000) * 3600 "
        f"GROUP BY arm HAVING sum(serves) > 0 ORDER BY arm",
        parameters={"e": experiment, "entity": entity, "start": start_ms, "end": end_ms}).result_rows
    return {arm: (serves, count, s, ss) for arm, serves, count, s, ss in rows}


@dataclass(frozen=True)
class EvaluationLog:
    """The in-experiment serves of one entity in event-time order, with their attributed
    rewards: the log off-policy evaluation reads. Arrays have shape (n,); `action[i]` is
    an index into `arms` (the spec's arms, then those only older versions had)."""

    arms: tuple[str, ...]
    action: np.ndarray
    reward: np.ndarray
    pscore: np.ndarray  # the serve's propensity under the table in force
    timestamp_ms: np.ndarray
    weights_version: np.ndarray

    def bandit_log(self) -> BanditLog:
        """As `sluice.core.ope.BanditLog` (one slot, no context)."""
        from sluice.core.ope import BanditLog

        return BanditLog.of(self.action, self.reward, self.pscore, n_actions=len(self.arms))


def evaluation_log(client: Any, experiment: str, entity: str, database: str = "sluice", *,
                   since_ms: int | None = None, until_ms: int | None = None) -> EvaluationLog:
    """The log of `entity`'s in-experiment serves in [since_ms, until_ms) from
    `attributed_serves`, the same rows `sluice export` writes."""
    spec = experiment_spec(client, experiment, database)
    where, params = ["entity = {entity:String}", "in_experiment"], {"e": experiment, "entity": entity}
    if since_ms is not None:
        where.append("toUnixTimestamp64Milli(timestamp) >= {since:Int64}")
        params["since"] = since_ms
    if until_ms is not None:
        where.append("toUnixTimestamp64Milli(timestamp) < {until:Int64}")
        params["until"] = until_ms
    rows = client.query(
        f"SELECT arm, reward, propensity, toUnixTimestamp64Milli(timestamp), weights_version "
        f"FROM {database}.attributed_serves(experiment = {{e:String}}) WHERE {' AND '.join(where)} "
        f"ORDER BY timestamp, serve_id", parameters=params).result_rows
    arms = list(spec.arm_names)
    arms += sorted({r[0] for r in rows} - set(arms))
    index = {a: i for i, a in enumerate(arms)}
    columns = list(zip(*rows)) or [(), (), (), (), ()]
    return EvaluationLog(tuple(arms), np.array([index[a] for a in columns[0]], dtype=np.int64),
                         np.array(columns[1], dtype=float), np.array(columns[2], dtype=float),
                         np.array(columns[3], dtype=np.int64), np.array(columns[4], dtype=np.int64))
