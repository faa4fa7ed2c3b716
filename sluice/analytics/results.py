"""An entity's results as the control API serves them, read from ClickHouse.

`entity_results`: the weight table in force and the statistics it was computed from (the
worker's window), each arm's mean with its 95 % interval and P(best), the latest decision
with its rule, recent alerts, and the latest offline estimates. `weights_as_of`: the table
in force at a past moment and the reward by arm it was computed from, from the weight-table
history (every version the sink landed), so "what did the bandit believe on Tuesday at 10"
has an exact answer. `entity_history`: the tables over time with each one's P(best), and the
estimated cumulative regret of the traffic as served, for the console's plots.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sluice.analytics.attribution import hourly
from sluice.analytics.report import period_regret
from sluice.clickhouse import ClickHouseError
from sluice.core.spec import ExperimentSpec
from sluice.core.stats.comparison import ArmData, compare
from sluice.core.thompson import beta_best_probabilities
from sluice.errors import SluiceError

ALERTS_SHOWN = 20
HISTORY_POINTS = 150  # P(best) is computed for at most this many tables of an entity


class NoResultsError(SluiceError):
    """ClickHouse holds nothing for what was asked (no weight table yet, or none that early)."""


def _rows(client: Any, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        result = client.query(sql, parameters=parameters)
    except Exception as exc:  # clickhouse-connect's and chDB's own errors
        raise ClickHouseError(f"reading results from ClickHouse failed: {exc}") from exc
    return [dict(zip(result.column_names, row)) for row in result.result_rows]


def _table(client: Any, database: str, spec: ExperimentSpec, entity: str, at_ms: int | None) -> dict[str, Any] | None:
    """The newest weight table of (experiment, entity) computed at or before `at_ms` (None:
    the newest of all), each arm once (a retried insert may have landed twice)."""
    before = "" if at_ms is None else " AND toUnixTimestamp64Milli(computed_at) <= {at:Int64}"
    parameters: dict[str, Any] = {"e": spec.id, "x": entity, **({} if at_ms is None else {"at": at_ms})}
    rows = _rows(client, f"""
        SELECT version, arm, weight, serves, count, sum, sum_squares, policy, reason,
               toUnixTimestamp64Milli(window_start) AS window_start_ms, toUnixTimestamp64Milli(window_end) AS window_end_ms,
               toUnixTimestamp64Milli(computed_at) AS computed_at_ms
        FROM {database}.weights
        WHERE experiment_id = {{e:String}} AND entity = {{x:String}} AND version = (
            SELECT max(version) FROM {database}.weights
            WHERE experiment_id = {{e:String}} AND entity = {{x:String}}{before})
        LIMIT 1 BY arm""", parameters)
    if not rows:
        return None
    order = {name: i for i, name in enumerate(spec.arm_names)}
    rows.sort(key=lambda r: order.get(r["arm"], len(order)))
    binary = spec.reward.type == "binary"
    arms = []
    for r in rows:
        # A table can count an arm's clicks before its serves (two topics): a binary arm's
        # successes are capped at its observations, as the worker's posterior does.
        total = min(r["sum"], r["count"]) if binary else r["sum"]
        arms.append({"arm": r["arm"], "weight": r["weight"], "serves": r["serves"], "count": r["count"],
                     "sum": total, "sum_squares": r["sum_squares"],
                     "mean": total / r["count"] if r["count"] else None})
    first = rows[0]
    return {"version": first["version"], "computed_at_ms": first["computed_at_ms"], "policy": first["policy"],
            "reason": first["reason"], "window_start_ms": first["window_start_ms"],
            "window_end_ms": first["window_end_ms"], "arms": arms}


def entity_history(client: Any, database: str, spec: ExperimentSpec, entity: str,
                   max_points: int = HISTORY_POINTS) -> dict[str, Any]:
    """The weight tables of (experiment, entity) over time and the regret of its traffic.

    `tables`: at most `max_points` of its tables spread evenly over its history, oldest
    first, each with its weights and, for a binary reward, the exact P(best) of its window
    (None for a continuous one). `regret`: after each hour of attributed serves (epoch ms),
    the estimated cumulative regret of the traffic as served and of an equal split of it,
    against each day's best arm (`period_regret`, as the report draws it); empty while no
    serve landed. Raises `NoResultsError` while no table of it has landed.
    """
    rows = _rows(client, f"""
        SELECT version, arm, weight, count, sum, toUnixTimestamp64Milli(computed_at) AS computed_at_ms
        FROM {database}.weights WHERE experiment_id = {{e:String}} AND entity = {{x:String}}
        ORDER BY version LIMIT 1 BY version, arm""", {"e": spec.id, "x": entity})
    if not rows:
        raise NoResultsError(f"no weight table of experiment {spec.id!r} for entity {entity!r} in ClickHouse yet")
    arms = [a for a in spec.arm_names if any(r["arm"] == a for r in rows)]
    arms += sorted({r["arm"] for r in rows} - set(arms))
    versions = sorted({r["version"] for r in rows})
    kept = {versions[i] for i in np.unique(np.linspace(0, len(versions) - 1, min(max_points, len(versions))).astype(int))}
    by_version: dict[int, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["version"] in kept:
            by_version.setdefault(r["version"], {})[r["arm"]] = r
    tables = []
    for version in sorted(by_version):
        table = by_version[version]
        n = np.array([table[a]["count"] if a in table else 0 for a in arms], dtype=float)
        # Successes capped at observations, as the worker's posterior caps them.
        successes = np.minimum([table[a]["sum"] if a in table else 0 for a in arms], n)
        p_best = beta_best_probabilities(1 + successes, 1 + n - successes) if spec.reward.type == "binary" else None
        tables.append({"version": version, "computed_at_ms": next(iter(table.values()))["computed_at_ms"],
                       "weights": {a: table[a]["weight"] for a in arms if a in table},
                       "p_best": None if p_best is None else dict(zip(arms, p_best.tolist()))})
    try:
        served = hourly(client, spec.id, database, arms={entity: arms}).get(entity)
    except Exception as exc:  # clickhouse-connect's and chDB's own errors
        raise ClickHouseError(f"reading the attributed hours from ClickHouse failed: {exc}") from exc
    if served is None:
        regret: dict[str, list[float]] = {"hours_ms": [], "experiment": [], "equal_split": []}
    else:
        policy, equal = period_regret(served.hours, served.count, served.sum)
        regret = {"hours_ms": served.hours.astype(int).tolist(), "experiment": policy.tolist(),
                  "equal_split": equal.tolist()}
    return {"experiment": spec.id, "entity": entity, "arms": arms, "tables": tables, "regret": regret}


def _statistics(spec: ExperimentSpec, table: dict[str, Any]) -> dict[str, Any]:
    """Means, 95 % intervals and P(best) of the table's window, or why there are none yet."""
    arms = table["arms"]
    n = np.array([a["count"] for a in arms], dtype=float)
    sums = np.array([a["sum"] for a in arms], dtype=float)
    data = ArmData(n=n, successes=sums, names=tuple(a["arm"] for a in arms)) if spec.reward.type == "binary" else \
        ArmData(n=n, sums=sums, sums_sq=np.array([a["sum_squares"] for a in arms], dtype=float),
                names=tuple(a["arm"] for a in arms))
    if len(arms) < 2 or np.any(n < data.min_events_for_comparison):
        return {"arms": [], "note": f"every arm needs {data.min_events_for_comparison} observations in the window "
                                    f"before the arms can be compared; they have {n.astype(int).tolist()}"}
    control = next((i for i, a in enumerate(arms) if a["arm"] == spec.default_arm), 0)
    comparison = compare(data, control=control)
    return {"confidence": 0.95, "control": arms[control]["arm"], "arms": [
        {"arm": s.name, "n": s.n, "mean": s.mean, "lower": s.lower, "upper": s.upper, "p_best": _finite(s.p_best),
         "p_beat_control": _finite(s.p_beat_control), "expected_loss": _finite(s.expected_loss)}
        for s in comparison.arms]}


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def entity_results(client: Any, database: str, spec: ExperimentSpec, entity: str) -> dict[str, Any]:
    """Everything the API's results route answers for (experiment, entity); raises
    `NoResultsError` while no weight table of it has landed."""
    table = _table(client, database, spec, entity, None)
    if table is None:
        raise NoResultsError(f"no weight table of experiment {spec.id!r} for entity {entity!r} in ClickHouse yet")
    where = {"e": spec.id, "x": entity}
    decisions = _rows(client, f"""
        SELECT verdict, winner, rule, reason, toUnixTimestamp64Milli(timestamp) AS timestamp_ms
        FROM {database}.decisions WHERE experiment_id = {{e:String}} AND ifNull(entity, '') = {{x:String}}
        ORDER BY timestamp DESC LIMIT 1""", where)
    alerts = _rows(client, f"""
        SELECT kind, severity, arm, message, value, threshold, toUnixTimestamp64Milli(timestamp) AS timestamp_ms
        FROM {database}.alerts WHERE experiment_id = {{e:String}} AND ifNull(entity, '') = {{x:String}}
        ORDER BY timestamp DESC LIMIT 1 BY event_id LIMIT {ALERTS_SHOWN}""", where)
    offline = _rows(client, f"""
        SELECT target, estimator, estimate, lower, upper, interval, effective_sample_size,
               toUnixTimestamp64Milli(window_start) AS window_start_ms, toUnixTimestamp64Milli(window_end) AS window_end_ms,
               toUnixTimestamp64Milli(computed_at) AS computed_at_ms
        FROM {database}.offline_evaluations
        WHERE experiment_id = {{e:String}} AND entity = {{x:String}} AND computed_at = (
            SELECT max(computed_at) FROM {database}.offline_evaluations WHERE experiment_id = {{e:String}} AND entity = {{x:String}})
        ORDER BY target, estimator""", where)
    return {"experiment": spec.id, "entity": entity, "reward_type": spec.reward.type, "weights": table,
            "statistics": _statistics(spec, table), "decision": decisions[0] if decisions else None,
            "alerts": alerts, "offline": [{k: _finite(v) if isinstance(v, float) else v for k, v in r.items()}
                                          for r in offline]}


def weights_as_of(client: Any, database: str, spec: ExperimentSpec, entity: str, at_ms: int) -> dict[str, Any]:
    """The weight table of (experiment, entity) in force at `at_ms` (epoch ms) — the newest
    computed at or before it — with the reward by arm it was computed from; raises
    `NoResultsError` when none was computed by then."""
    table = _table(client, database, spec, entity, at_ms)
    if table is None:
        raise NoResultsError(f"no weight table of experiment {spec.id!r} for entity {entity!r} was computed at or "
                             f"before {at_ms} (epoch ms)")
    return {"experiment": spec.id, "entity": entity, "at_ms": at_ms, "weights": table}
