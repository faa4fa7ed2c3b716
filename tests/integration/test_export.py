"""`sluice export`: one row per serve with its attributed reward, the same bytes whether the
sink wrote every event once or twice, filters by entity and time, parquet and csv."""

from __future__ import annotations

import csv
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sluice.analytics.export import ExportError, export
from sluice.clickhouse import migrate

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
SERVE_COLS = ["event_id", "serve_id", "experiment_id", "entity", "unit_id", "arm", "in_experiment", "propensity",
              "weights_version", "bucket", "timestamp", "context"]
REWARD_COLS = ["event_id", "serve_id", "experiment_id", "entity", "name", "value", "latency_ms", "error", "timestamp"]


def events() -> tuple[list[list], list[list]]:
    serves, rewards = [], []
    for i in range(6):
        sid = f"00000000-0000-4000-8000-00000000000{i}"
        serves.append([sid, sid, "exp", "e1" if i < 4 else "e2", f"u{i}", "a" if i % 2 else "b", True, 0.5, 3, i,
                       T0 + timedelta(hours=i), {"page": f"p{i}"}])
    rewards.append([str(uuid.uuid4()), serves[0][1], "exp", "e1", "click", 1.0, None, None, T0 + timedelta(minutes=5)])
    rewards.append([str(uuid.uuid4()), serves[0][1], "exp", "e1", "click", 1.0, None, None, T0 + timedelta(minutes=9)])
    rewards.append([str(uuid.uuid4()), serves[1][1], "exp", "e1", "click", 1.0, None, None, T0 + timedelta(hours=30)])  # late
    rewards.append([str(uuid.uuid4()), "never-served", "exp", "e1", "click", 1.0, None, None, T0])
    return serves, rewards


def load(client, db: str, times: int) -> None:
    migrate(client, database=db)
    serves, rewards = events()
    for _ in range(times):  # a sink that wrote everything twice (no dedup token) must not change the dataset
        client.insert(f"{db}.serves", serves, column_names=SERVE_COLS)
        client.insert(f"{db}.rewards", rewards, column_names=REWARD_COLS)


def test_rows_are_one_per_serve_with_the_attributed_reward(clickhouse, database, tmp_path: Path) -> None:
    load(clickhouse, database, 1)
    out = tmp_path / "e1.csv"
    assert export(clickhouse, "exp", out, "csv", database=database, entity="e1") == 4
    rows = list(csv.DictReader(out.open()))
    assert [r["unit_id"] for r in rows] == ["u0", "u1", "u2", "u3"]
    assert [(r["reward"], r["rewarded"], r["reward_events"]) for r in rows] == [
        ("1.0", "True", "2"), ("0.0", "False", "0"), ("0.0", "False", "0"), ("0.0", "False", "0")]  # u1's is late
    assert rows[0]["context"] == '{"page":"p0"}' and rows[0]["propensity"] == "0.5" and rows[0]["weights_version"] == "3"


def test_events_written_twice_give_the_same_file(clickhouse, tmp_path: Path) -> None:
    once, twice = f"t_{uuid.uuid4().hex[:10]}", f"t_{uuid.uuid4().hex[:10]}"
    load(clickhouse, once, 1)
    load(clickhouse, twice, 2)
    a, b = tmp_path / "once.csv", tmp_path / "twice.csv"
    export(clickhouse, "exp", a, "csv", database=once)
    export(clickhouse, "exp", b, "csv", database=twice)
    assert a.read_bytes() == b.read_bytes()
    assert len(a.read_text().splitlines()) == 7


def test_parquet_filters_and_errors(clickhouse, database, tmp_path: Path) -> None:
    load(clickhouse, database, 1)
    out = tmp_path / "x.parquet"
    assert export(clickhouse, "exp", out, "parquet", database=database, since=T0 + timedelta(hours=3)) == 3
    table = pq.read_table(out)
    assert table.column("unit_id").to_pylist() == ["u3", "u4", "u5"]
    assert table.schema.field("propensity").type == "double"
    with pytest.raises(ExportError, match="no serves of experiment 'nope'"):
        export(clickhouse, "nope", out, "parquet", database=database)
    with pytest.raises(ExportError, match="parquet or csv"):
        export(clickhouse, "exp", out, "xlsx", database=database)
