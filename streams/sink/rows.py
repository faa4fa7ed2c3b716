"""From decoded records to ClickHouse rows: one function per topic, one row shape per table.

Each row ends with the Kafka lineage columns (`_topic`, `_partition`, `_offset`), which the
sink also uses to find where to resume after a crash.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sluice.core.spec import spec_from_record

LINEAGE = ("_topic", "_partition", "_offset")

SERVE_COLUMNS = ("event_id", "serve_id", "experiment_id", "entity", "unit_id", "arm", "in_experiment", "propensity",
                 "weights_version", "bucket", "timestamp", "context")
REWARD_COLUMNS = ("event_id", "serve_id", "experiment_id", "entity", "name", "value", "latency_ms", "error", "timestamp")
WEIGHT_COLUMNS = ("event_id", "experiment_id", "entity", "version", "arm", "weight", "buckets", "policy", "reason",
                  "serves", "count", "sum", "sum_squares", "window_start", "window_end", "computed_at")
ALERT_COLUMNS = ("event_id", "experiment_id", "entity", "arm", "kind", "severity", "value", "threshold", "message",
                 "weights_version", "timestamp")
DECISION_COLUMNS = ("event_id", "experiment_id", "entity", "verdict", "winner", "rule", "reason", "arm_actions", "timestamp")
EXPERIMENT_COLUMNS = ("event_id", "experiment_id", "spec_version", "status", "arms", "default_arm", "policy",
                      "reward_type", "reward_name", "attribution_window_ms", "window_ms", "updated_at", "spec_json")
AUDIT_COLUMNS = ("event_id", "request_id", "token_id", "token_name", "action", "experiment_id", "arm", "entity",
                 "before_json", "after_json", "timestamp")


def _flat(columns: tuple[str, ...]) -> Callable[[dict[str, Any]], Iterator[tuple[Any, ...]]]:
    def rows(record: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
        yield tuple(record.get(c) for c in columns)

    return rows


def weight_rows(record: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """One row per arm of a weight table, with that arm's statistics beside its weight."""
    stats = {s["arm"]: s for s in record["statistics"]}
    for arm in record["arms"]:
        s = stats.get(arm["arm"], {})
        yield (record["event_id"], record["experiment_id"], record["entity"], record["version"], arm["arm"], arm["weight"],
               arm["buckets"], record["policy"], record["reason"], s.get("serves", 0), s.get("count", 0), s.get("sum", 0.0),
               s.get("sum_squares", 0.0), record["window_start"], record["window_end"], record["computed_at"])


def decision_rows(record: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    yield (record["event_id"], record["experiment_id"], record.get("entity"), record["verdict"], record.get("winner"),
           record["rule"], record["reason"], json.dumps(record["arm_actions"]), record["timestamp"])


def experiment_rows(record: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """One row per published spec version, with what the attribution views read of it (the
    reward's name is only in `spec_json`); a spec that does not validate raises SpecError."""
    spec = spec_from_record(record)
    yield (record["event_id"], spec.id, spec.spec_version, spec.status, list(spec.arm_names), spec.default_arm,
           spec.policy.name, spec.reward.type, spec.reward.name, spec.reward.attribution_window_ms, spec.window_ms,
           record["updated_at"], record["spec_json"])


@dataclass(frozen=True)
class TableRoute:
    """Where records of one schema go, and how they become rows.

    `clickhouse_decodes`: the table's columns are the record's fields by name, one row per
    record, so ClickHouse can read the Avro bodies itself (`streams.sink.avro_blocks`). Set
    for the high-volume topics; the others are decoded here with `rows`.
    """

    schema: str  # short record name the topic must carry
    table: str
    columns: tuple[str, ...]
    rows: Callable[[dict[str, Any]], Iterator[tuple[Any, ...]]]
    clickhouse_decodes: bool = False


ROUTES: dict[str, TableRoute] = {
    "serves": TableRoute("ServeEvent", "serves", SERVE_COLUMNS, _flat(SERVE_COLUMNS), clickhouse_decodes=True),
    "rewards": TableRoute("RewardEvent", "rewards", REWARD_COLUMNS, _flat(REWARD_COLUMNS), clickhouse_decodes=True),
    "weights": TableRoute("WeightTable", "weights", WEIGHT_COLUMNS, weight_rows),
    "alerts": TableRoute("Alert", "alerts", ALERT_COLUMNS, _flat(ALERT_COLUMNS)),
    "decisions": TableRoute("Decision", "decisions", DECISION_COLUMNS, decision_rows),
    "experiments": TableRoute("ExperimentSpec", "experiments", EXPERIMENT_COLUMNS, experiment_rows),
    "audit": TableRoute("AuditEvent", "audit_log", AUDIT_COLUMNS, _flat(AUDIT_COLUMNS)),
}
