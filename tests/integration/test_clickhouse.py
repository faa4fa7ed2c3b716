"""Migrations on the embedded ClickHouse engine (or CLICKHOUSE_URL's server)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from sluice.clickhouse import MIGRATIONS, migrate
from sluice.clickhouse.migrations import TTL_TABLES

pytestmark = pytest.mark.integration

# Rows older than the TTL vanish on insert: use recent event times.
NOW_MS = int(time.time() * 1000)


def test_migrations_apply_twice_and_rows_come_back(clickhouse: Any, database: str) -> None:
    assert migrate(clickhouse, database=database) == [m.version for m in MIGRATIONS]
    assert migrate(clickhouse, database=database) == []
    tables = {r[0] for r in clickhouse.query(f"SHOW TABLES FROM {database}").result_rows}
    assert set(TTL_TABLES) <= tables

    serve = ["e1", "s1", "ranking", "adv-1", "user-1", "model-b", True, 0.25, 4, 1234, NOW_MS + 123, {"page": "home"}]
    cols = ["event_id", "serve_id", "experiment_id", "entity", "unit_id", "arm", "in_experiment", "propensity",
            "weights_version", "bucket", "timestamp", "context"]
    clickhouse.insert(f"{database}.serves", [serve], column_names=cols)
    clickhouse.insert(f"{database}.rewards", [["r1", "s1", "ranking", "adv-1", "click", 1.0, None, None, NOW_MS + 1000]],
                      column_names=["event_id", "serve_id", "experiment_id", "entity", "name", "value", "latency_ms", "error", "timestamp"])
    row = clickhouse.query(
        f"SELECT s.arm, s.propensity, toUnixTimestamp64Milli(s.timestamp), s.context['page'], r.value "
        f"FROM {database}.serves AS s INNER JOIN {database}.rewards AS r USING serve_id").result_rows
    assert row == [("model-b", 0.25, NOW_MS + 123, "home", 1.0)]

    # The hourly materialized views and the attributed view follow the inserts.
    hourly = clickhouse.query(f"SELECT arm, sum(serves), sum(in_experiment), sum(propensity_sum) "
                              f"FROM {database}.serves_hourly GROUP BY arm").result_rows
    assert hourly == [("model-b", 1, 1, 0.25)]
    rewards = clickhouse.query(f"SELECT name, sum(rewards), sum(value_sum) FROM {database}.rewards_hourly "
                               f"GROUP BY name").result_rows
    assert rewards == [("click", 1, 1.0)]
    attributed = clickhouse.query(f"SELECT serve_id, arm, propensity, delay_ms FROM {database}.attributed").result_rows
    assert attributed == [("s1", "model-b", 0.25, 877)]


def test_ttl_follows_the_configuration_on_every_migrate(clickhouse: Any, database: str) -> None:
    migrate(clickhouse, database=database, ttl_days=90)
    migrate(clickhouse, database=database, ttl_days=30)
    ddl = clickhouse.query(f"SHOW CREATE TABLE {database}.serves").result_rows[0][0]
    assert "toIntervalDay(30)" in ddl


def test_a_retried_insert_with_the_same_token_is_dropped(clickhouse: Any, database: str) -> None:
    migrate(clickhouse, database=database)
    row = [["r1", "s1", "ranking", "adv-1", "click", 1.0, None, None, NOW_MS + 1000]]
    cols = ["event_id", "serve_id", "experiment_id", "entity", "name", "value", "latency_ms", "error", "timestamp"]
    for _ in range(2):
        clickhouse.insert(f"{database}.rewards", row, column_names=cols, settings={"insert_deduplication_token": "rewards-0-0-0"})
    assert clickhouse.query(f"SELECT count() FROM {database}.rewards").result_rows == [(1,)]


def test_specs_land_with_the_rules_and_the_views_follow_the_latest_version(clickhouse: Any, database: str) -> None:
    from tests.analytics_support import land_spec, spec

    migrate(clickhouse, database=database)
    assert "experiments" not in TTL_TABLES  # a spec lives as long as the data it explains
    land_spec(clickhouse, database, spec("ranking", ["a", "b"]), updated_at_ms=NOW_MS)
    land_spec(clickhouse, database, spec("ranking", ["a", "b", "c"], reward_type="continuous", reward_name="revenue",
                                         attribution_hours=48, window_days=3, spec_version=2), updated_at_ms=NOW_MS + 1)
    rows = clickhouse.query(f"SELECT spec_version, reward_name, reward_type, attribution_window_ms, window_ms, "
                            f"arraySort(arms_ever) FROM {database}.attribution_spec(experiment = 'ranking')"
                            ).result_rows
    assert rows == [(2, "revenue", "continuous", 48 * 3_600_000, 3 * 86_400_000, ["a", "b", "c"])]
    other = clickhouse.query(f"SELECT count() FROM {database}.attribution_spec(experiment = 'other')").result_rows
    assert other == [(0,)]
