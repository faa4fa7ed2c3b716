"""Sluice's ClickHouse tables, as numbered idempotent migrations.

`migrate` applies the ones a database has not seen, records them in
`<db>.schema_migrations`, and (every time) sets the row TTL of the event tables to the
configured number of days, so changing `SLUICE_CLICKHOUSE_TTL_DAYS` takes effect on the
next start. Every statement may run twice without harm.

Conventions: event time is `DateTime64(3, 'UTC')`, filled from epoch milliseconds; ids
that repeat (experiment, entity, arm, topic) are `LowCardinality(String)`; each event row
keeps the Kafka topic, partition and offset it came from, for lineage and deduplication.
Tables that a sink fills set `non_replicated_deduplication_window`, so a retried insert
with the same `insert_deduplication_token` is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sluice.clickhouse.client import ClickHouseError


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


_KAFKA_LINEAGE = """
    _topic LowCardinality(String) DEFAULT '',
    _partition UInt32 DEFAULT 0,
    _offset UInt64 DEFAULT 0,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)"""

_DEDUP = "SETTINGS non_replicated_deduplication_window = 10000"

# Tables whose rows expire after the configured TTL, and the column it counts from.
TTL_TABLES = {"serves": "timestamp", "rewards": "timestamp", "weights": "computed_at", "alerts": "timestamp", "decisions": "timestamp",
              "serves_hourly": "hour", "rewards_hourly": "hour"}

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "events, weight tables, alerts and decisions", (
        """CREATE TABLE IF NOT EXISTS {db}.serves (
    event_id String,
    serve_id String,
    experiment_id LowCardinality(String),
    entity LowCardinality(String),
    unit_id String,
    arm LowCardinality(String),
    in_experiment Bool,
    propensity Float64,
    weights_version UInt64,
    bucket UInt32,
    timestamp DateTime64(3, 'UTC'),
    context Map(String, String),""" + _KAFKA_LINEAGE + """
) ENGINE = MergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (experiment_id, entity, timestamp, serve_id)
""" + _DEDUP,
        """CREATE TABLE IF NOT EXISTS {db}.rewards (
    event_id String,
    serve_id String,
    experiment_id LowCardinality(String),
    entity LowCardinality(String),
    name LowCardinality(String),
    value Float64,
    latency_ms Nullable(Float64),
    error Nullable(Bool),
    timestamp DateTime64(3, 'UTC'),""" + _KAFKA_LINEAGE + """
) ENGINE = MergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (experiment_id, entity, timestamp, serve_id)
""" + _DEDUP,
        # One row per arm of each published weight table: what dashboards plot.
        """CREATE TABLE IF NOT EXISTS {db}.weights (
    event_id String,
    experiment_id LowCardinality(String),
    entity LowCardinality(String),
    version UInt64,
    arm LowCardinality(String),
    weight Float64,
    buckets UInt32,
    policy LowCardinality(String),
    reason String,
    serves UInt64,
    count UInt64,
    sum Float64,
    sum_squares Float64,
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    computed_at DateTime64(3, 'UTC'),""" + _KAFKA_LINEAGE + """
) ENGINE = MergeTree
PARTITION BY toYYYYMM(computed_at)
ORDER BY (experiment_id, entity, version, arm)
""" + _DEDUP,
        """CREATE TABLE IF NOT EXISTS {db}.alerts (
    event_id String,
    experiment_id LowCardinality(String),
    entity Nullable(String),
    arm Nullable(String),
    kind LowCardinality(String),
    severity LowCardinality(String),
    value Float64,
    threshold Float64,
    message String,
    weights_version Nullable(UInt64),
    timestamp DateTime64(3, 'UTC'),""" + _KAFKA_LINEAGE + """
) ENGINE = MergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (experiment_id, timestamp)
""" + _DEDUP,
        """CREATE TABLE IF NOT EXISTS {db}.decisions (
    event_id String,
    experiment_id LowCardinality(String),
    entity Nullable(String),
    verdict LowCardinality(String),
    winner Nullable(String),
    rule LowCardinality(String),
    reason String,
    arm_actions String,
    timestamp DateTime64(3, 'UTC'),""" + _KAFKA_LINEAGE + """
) ENGINE = MergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (experiment_id, timestamp)
""" + _DEDUP,
    )),
    Migration(2, "hourly per-arm aggregates (materialized views) and attributed outcomes", (
        # Serves per (experiment, entity, arm, event hour): fast traffic panels.
        """CREATE TABLE IF NOT EXISTS {db}.serves_hourly (
    experiment_id LowCardinality(String),
    entity LowCardinality(String),
    arm LowCardinality(String),
    hour DateTime('UTC'),
    serves UInt64,
    in_experiment UInt64,
    propensity_sum Float64
) ENGINE = SummingMergeTree
ORDER BY (experiment_id, entity, arm, hour)""",
        """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.serves_hourly_mv TO {db}.serves_hourly AS
SELECT experiment_id, entity, arm, toStartOfHour(timestamp) AS hour, count() AS serves,
       countIf(in_experiment) AS in_experiment, sum(propensity) AS propensity_sum
FROM {db}.serves GROUP BY experiment_id, entity, arm, hour""",
        # Rewards per (experiment, entity, reward name, event hour), with health figures.
        """CREATE TABLE IF NOT EXISTS {db}.rewards_hourly (
    experiment_id LowCardinality(String),
    entity LowCardinality(String),
    name LowCardinality(String),
    hour DateTime('UTC'),
    rewards UInt64,
    value_sum Float64,
    errors UInt64,
    error_reports UInt64,
    latency_ms_sum Float64,
    latency_reports UInt64
) ENGINE = SummingMergeTree
ORDER BY (experiment_id, entity, name, hour)""",
        """CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.rewards_hourly_mv TO {db}.rewards_hourly AS
SELECT experiment_id, entity, name, toStartOfHour(timestamp) AS hour, count() AS rewards, sum(value) AS value_sum,
       countIf(error = true) AS errors, countIf(error IS NOT NULL) AS error_reports,
       sum(ifNull(latency_ms, 0)) AS latency_ms_sum, countIf(latency_ms IS NOT NULL) AS latency_reports
FROM {db}.rewards GROUP BY experiment_id, entity, name, hour""",
        # Attributed outcomes: every reward with the serve it belongs to (arm, propensity,
        # table version) and its delay; rewards whose serve never landed are left out.
        """CREATE VIEW IF NOT EXISTS {db}.attributed AS
SELECT r.event_id AS reward_event_id, r.serve_id AS serve_id, r.experiment_id AS experiment_id, r.entity AS entity,
       s.arm AS arm, s.in_experiment AS in_experiment, s.propensity AS propensity,
       s.weights_version AS weights_version, r.name AS name, r.value AS value,
       s.timestamp AS served_at, r.timestamp AS rewarded_at,
       dateDiff('millisecond', s.timestamp, r.timestamp) AS delay_ms
FROM {db}.rewards AS r INNER JOIN {db}.serves AS s ON s.serve_id = r.serve_id""",
    )),
)


def migrate(client: Any, *, database: str = "sluice", ttl_days: int = 90) -> list[int]:
    """Apply the migrations `database` has not seen; return the versions applied now."""
    if ttl_days < 1:
        raise ClickHouseError(f"ttl_days must be at least 1, got {ttl_days}")
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
        client.command(
            f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations "
            "(version UInt32, description String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
            "ENGINE = MergeTree ORDER BY version"
        )
        done = {row[0] for row in client.query(f"SELECT version FROM {database}.schema_migrations").result_rows}
        applied = []
        for m in MIGRATIONS:
            if m.version in done:
                continue
            for statement in m.statements:
                client.command(statement.format(db=database))
            client.insert(f"{database}.schema_migrations", [[m.version, m.description]], column_names=["version", "description"])
            applied.append(m.version)
        for table, column in TTL_TABLES.items():
            client.command(f"ALTER TABLE {database}.{table} MODIFY TTL toDateTime({column}) + INTERVAL {int(ttl_days)} DAY")
        return applied
    except ClickHouseError:
        raise
    except Exception as exc:
        raise ClickHouseError(f"migrating ClickHouse database {database} failed: {exc}") from exc
