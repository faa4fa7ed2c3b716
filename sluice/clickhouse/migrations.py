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

# The parts of a serve token (sluice/core/serve_token.py): unique, time (hex ms), flag, arm.
_TOKEN = "'^1[.]([0-9a-f]+)[.]([0-9a-f]+)[.]([01])[.]([A-Za-z0-9][A-Za-z0-9_.-]*)$'"

# Tables whose rows expire after the configured TTL, and the column it counts from.
TTL_TABLES = {"serves": "timestamp", "rewards": "timestamp", "weights": "computed_at", "alerts": "timestamp", "decisions": "timestamp",
              "serves_hourly": "hour", "rewards_hourly": "hour", "offline_evaluations": "computed_at"}

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
    Migration(3, "experiment specs, and the stream worker's attribution rules as views", (
        # Every published version of every spec (the compacted experiments topic), so the
        # views below take the rules from the spec. No TTL: a spec lives as long as its data.
        """CREATE TABLE IF NOT EXISTS {db}.experiments (
    event_id String,
    experiment_id LowCardinality(String),
    spec_version UInt64,
    status LowCardinality(String),
    arms Array(String),
    default_arm String,
    policy LowCardinality(String),
    reward_type LowCardinality(String),
    reward_name String,
    attribution_window_ms Int64,
    window_ms Int64,
    updated_at DateTime64(3, 'UTC'),
    spec_json String,""" + _KAFKA_LINEAGE + """
) ENGINE = MergeTree
ORDER BY (experiment_id, spec_version)
""" + _DEDUP,
        # The attribution rules of the stream worker (README, "Attribution";
        # streams/processor.py), once, as views that take the experiment as a parameter:
        # `SELECT * FROM {db}.attributed_hourly(experiment = 'x')`. The rules come from the
        # latest version of the experiment's spec; arms are those of any version.
        """CREATE VIEW IF NOT EXISTS {db}.attribution_spec AS
SELECT e.experiment_id AS experiment_id,
       max(e.spec_version) AS spec_version,
       argMax(e.reward_name, (e.spec_version, e.updated_at)) AS reward_name,
       argMax(e.reward_type, (e.spec_version, e.updated_at)) AS reward_type,
       argMax(e.attribution_window_ms, (e.spec_version, e.updated_at)) AS attribution_window_ms,
       argMax(e.window_ms, (e.spec_version, e.updated_at)) AS window_ms,
       groupUniqArrayArray(e.arms) AS arms_ever,
       argMax(e.spec_json, (e.spec_version, e.updated_at)) AS spec_json
FROM {db}.experiments AS e
WHERE e.experiment_id = {{experiment:String}}
GROUP BY e.experiment_id""",
        # The serves that count, once each: the serve id is the serve's own token (arm,
        # time, in-experiment flag), the arm is the experiment's, 0 < propensity <= 1 (what
        # the worker dead-letters is left out); a serve id logged again counts once (its
        # first logging, by Kafka offset; this also drops rows the sink wrote twice).
        """CREATE VIEW IF NOT EXISTS {db}.attribution_serves AS
SELECT event_id, serve_id, experiment_id, entity, unit_id, arm, in_experiment, propensity, weights_version, bucket,
       timestamp, context, toStartOfHour(toDateTime(timestamp, 'UTC')) AS hour
FROM (
    SELECT s.*, extractGroups(s.serve_id, """ + _TOKEN + """) AS token
    FROM {db}.serves AS s
    CROSS JOIN {db}.attribution_spec(experiment = {{experiment:String}}) AS spec
    WHERE s.experiment_id = {{experiment:String}}
      AND has(spec.arms_ever, s.arm) AND s.propensity > 0 AND s.propensity <= 1
)
WHERE length(token) = 4 AND length(token[1]) = 24 AND length(token[2]) <= 12
  AND reinterpretAsUInt64(reverse(unhex(leftPad(token[2], 16, '0')))) = toUnixTimestamp64Milli(timestamp)
  AND token[3] = if(in_experiment, '1', '0') AND token[4] = arm
ORDER BY _partition, _offset, event_id
LIMIT 1 BY entity, serve_id""",
        # Per (entity, serve id), from the rewards (each event once, by event_id) that carry
        # a valid serve token: the serve's arm, time and flag from the token (a reward counts
        # whether or not its serve landed), and the attributed total. A reward counts when
        # its name is the spec's reward, it comes at most the attribution window after the
        # serve, and the serve was in the experiment; binary: 1 once per serve if any counted
        # reward is 1; continuous: the sum. `newest_ms`: the newest of the serve's rewards of
        # any name (health reports too), which move the window as in the worker.
        """CREATE VIEW IF NOT EXISTS {db}.attribution_rewards AS
SELECT experiment_id, entity, serve_id, any(token[4]) AS arm, any(token_ms) AS serve_ms,
       any(token[3] = '1') AS in_experiment, countIf(counts) AS reward_events,
       if(any(reward_type) = 'binary', maxIf(value, counts), sumIf(value, counts)) AS total,
       max(ms) AS newest_ms
FROM (
    SELECT r.experiment_id AS experiment_id, r.entity AS entity, r.serve_id AS serve_id, r.value AS value,
           toUnixTimestamp64Milli(r.timestamp) AS ms, spec.reward_type AS reward_type,
           extractGroups(r.serve_id, """ + _TOKEN + """) AS token,
           toInt64(reinterpretAsUInt64(reverse(unhex(leftPad(token[2], 16, '0'))))) AS token_ms,
           r.name = spec.reward_name AND ms - token_ms <= spec.attribution_window_ms AND token[3] = '1' AS counts
    FROM (SELECT * FROM {db}.rewards WHERE experiment_id = {{experiment:String}} LIMIT 1 BY event_id) AS r
    CROSS JOIN {db}.attribution_spec(experiment = {{experiment:String}}) AS spec
    WHERE length(token) = 4 AND length(token[1]) = 24 AND length(token[2]) <= 12 AND length(token[4]) <= 128
      AND has(spec.arms_ever, token[4]) AND isFinite(r.value)
      AND NOT (r.name = spec.reward_name AND spec.reward_type = 'binary' AND r.value NOT IN (0, 1))
)
GROUP BY experiment_id, entity, serve_id""",
        # One row per serve that counts, with its attributed reward: the evaluation dataset.
        """CREATE VIEW IF NOT EXISTS {db}.attributed_serves AS
SELECT s.serve_id AS serve_id, s.timestamp AS timestamp, s.experiment_id AS experiment_id, s.entity AS entity,
       s.unit_id AS unit_id, s.arm AS arm, s.in_experiment AS in_experiment, s.propensity AS propensity,
       s.weights_version AS weights_version, s.bucket AS bucket, s.context AS context, s.hour AS hour,
       r.total AS reward, toBool(r.reward_events > 0) AS rewarded, r.reward_events AS reward_events
FROM {db}.attribution_serves(experiment = {{experiment:String}}) AS s
LEFT JOIN {db}.attribution_rewards(experiment = {{experiment:String}}) AS r
    ON r.entity = s.entity AND r.serve_id = s.serve_id""",
        # Per (entity, arm, hour of the serve): serves, in-experiment serves (observations),
        # and the sum and sum of squares of the serves' attributed totals: the counters the
        # worker keeps per hour.
        """CREATE VIEW IF NOT EXISTS {db}.attributed_hourly AS
SELECT experiment_id, entity, arm, hour, sum(n) AS serves, sum(observed) AS count, sum(reward_sum) AS sum,
       sum(reward_sum_sq) AS sum_sq
FROM (
    SELECT experiment_id, entity, arm, hour, count() AS n, countIf(in_experiment) AS observed,
           toFloat64(0) AS reward_sum, toFloat64(0) AS reward_sum_sq
    FROM {db}.attribution_serves(experiment = {{experiment:String}})
    GROUP BY experiment_id, entity, arm, hour
    UNION ALL
    SELECT experiment_id, entity, arm, toStartOfHour(toDateTime(intDiv(serve_ms, 1000), 'UTC')) AS hour,
           toUInt64(0) AS n, toUInt64(0) AS observed, sum(total) AS reward_sum, sum(total * total) AS reward_sum_sq
    FROM {db}.attribution_rewards(experiment = {{experiment:String}})
    WHERE reward_events > 0
    GROUP BY experiment_id, entity, arm, hour
)
GROUP BY experiment_id, entity, arm, hour""",
        # Per (entity, arm): the hourly counters summed over the window the worker holds, the
        # hours from hour(newest event time − the spec's window) to the newest hour, where the
        # newest event time is that of the entity's newest serve or reward of any name.
        """CREATE VIEW IF NOT EXISTS {db}.attributed_window AS
SELECT h.experiment_id AS experiment_id, h.entity AS entity, h.arm AS arm, sum(h.serves) AS serves,
       sum(h.count) AS count, sum(h.sum) AS sum, sum(h.sum_sq) AS sum_sq,
       any(w.window_start) AS window_start, any(w.window_end) AS window_end
FROM {db}.attributed_hourly(experiment = {{experiment:String}}) AS h
INNER JOIN (
    SELECT n.entity AS entity, fromUnixTimestamp64Milli(n.end_ms, 'UTC') AS window_end,
           fromUnixTimestamp64Milli(intDiv(n.end_ms - spec.window_ms, 3600000) * 3600000, 'UTC') AS window_start
    FROM (
        SELECT entity, max(ms) AS end_ms
        FROM (
            SELECT entity, toUnixTimestamp64Milli(timestamp) AS ms
            FROM {db}.attribution_serves(experiment = {{experiment:String}})
            UNION ALL
            SELECT entity, newest_ms AS ms FROM {db}.attribution_rewards(experiment = {{experiment:String}})
        )
        GROUP BY entity
    ) AS n
    CROSS JOIN {db}.attribution_spec(experiment = {{experiment:String}}) AS spec
) AS w ON w.entity = h.entity
WHERE h.hour >= w.window_start AND h.hour <= w.window_end
GROUP BY h.experiment_id, h.entity, h.arm""",
    )),
    Migration(4, "offline evaluations of candidate policies, per experiment and entity", (
        # What the continuous offline evaluation (sluice.analytics.offline) estimated each
        # run: one row per (entity, target, estimator), with its interval and diagnostics,
        # over the logged window [window_start, window_end).
        """CREATE TABLE IF NOT EXISTS {db}.offline_evaluations (
    computed_at DateTime64(3, 'UTC'),
    experiment_id LowCardinality(String),
    entity String,
    spec_version UInt64,
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    target String,
    estimator LowCardinality(String),
    estimate Float64,
    lower Float64,
    upper Float64,
    interval LowCardinality(String),
    effective_sample_size Float64,
    max_weight Float64,
    support_deficit Float64,
    n_rounds UInt64
) ENGINE = MergeTree
ORDER BY (experiment_id, entity, computed_at, target, estimator)""",
    )),
    Migration(5, "the control API's audit log", (
        # Every change made through the control API (the audit topic): who (token id and
        # name), what, and the spec before and after, as JSON. No TTL: an audit trail is
        # kept for as long as anyone may ask who changed an experiment.
        """CREATE TABLE IF NOT EXISTS {db}.audit_log (
    event_id String,
    request_id String,
    token_id LowCardinality(String),
    token_name String,
    action LowCardinality(String),
    experiment_id LowCardinality(String),
    arm Nullable(String),
    entity Nullable(String),
    before_json Nullable(String),
    after_json String,
    timestamp DateTime64(3, 'UTC'),""" + _KAFKA_LINEAGE + """
) ENGINE = MergeTree
ORDER BY (experiment_id, timestamp)
""" + _DEDUP,
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
