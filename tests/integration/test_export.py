"""`sluice export`: one row per serve with the reward the worker's rules attribute to it (by
the experiment's spec: its reward name, attribution window and reward type), the same bytes
whether the sink wrote every event once or twice, filters by entity and time, parquet and csv."""

from __future__ import annotations

import csv
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sluice.analytics.attribution import AttributionError
from sluice.analytics.export import ExportError, export
from sluice.clickhouse import migrate
from tests.analytics_support import REWARD_COLS, SERVE_COLS, land_spec, spec, token

pytestmark = pytest.mark.integration
# Recent event times: rows older than the tables' TTL vanish.
T0 = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(days=3)


def reward(serve_id: str, at: datetime, name: str = "click", value: float = 1.0, entity: str = "e1",
           experiment: str = "exp") -> list:
    return [str(uuid.uuid4()), serve_id, experiment, entity, name, value, None, None, at]


def events() -> tuple[list[list], list[list]]:
    serves, rewards = [], []
    for i in range(6):
        at, arm, entity = T0 + timedelta(hours=i), "a" if i % 2 else "b", "e1" if i < 4 else "e2"
        serves.append([str(uuid.uuid4()), token(i, at, arm), "exp", entity, f"u{i}", arm, True, 0.5, 3, i, at,
                       {"page": f"p{i}"}])
    s = [row[1] for row in serves]
    rewards += [reward(s[0], T0 + timedelta(minutes=5)), reward(s[0], T0 + timedelta(minutes=9))]  # counts once
    rewards.append(reward(s[1], T0 + timedelta(hours=1 + 30)))  # 30 h after its serve: late for a 24 h window
    rewards.append(reward(s[2], T0 + timedelta(hours=2, minutes=1), name="view"))  # not the experiment's reward
    rewards.append([str(uuid.uuid4()), s[3], "exp", "e1", "sluice.request", 0.0, 80.0, True, T0 + timedelta(hours=3)])
    rewards.append(reward(s[3], T0 + timedelta(hours=3, minutes=2), value=0.0))  # an observed 0
    rewards.append(reward(token(99, T0, "a"), T0))  # its serve never landed: no row
    # Logged outside the experiment (the default arm): its reward is not attributed.
    outside = token(6, T0 + timedelta(hours=6), "b", in_experiment=False)
    serves.append([str(uuid.uuid4()), outside, "exp", "e2", "u6", "b", False, 1.0, 0, 6, T0 + timedelta(hours=6), {}])
    rewards.append(reward(outside, T0 + timedelta(hours=6, minutes=1), entity="e2"))
    # The same serve logged twice (two events, one serve id) is one row.
    serves.append([str(uuid.uuid4())] + serves[4][1:])
    return serves, rewards


def load(client, db: str, times: int, attribution_hours: float = 24.0) -> None:
    migrate(client, database=db)
    land_spec(client, db, spec("exp", ["a", "b"], attribution_hours=attribution_hours))
    serves, rewards = events()
    for _ in range(times):  # a sink that wrote everything twice (no dedup token) must not change the dataset
        client.insert(f"{db}.serves", serves, column_names=SERVE_COLS)
        client.insert(f"{db}.rewards", rewards, column_names=REWARD_COLS)


def test_rows_are_one_per_serve_with_the_reward_the_worker_attributes(clickhouse, database, tmp_path: Path) -> None:
    load(clickhouse, database, 1)
    out = tmp_path / "e1.csv"
    assert export(clickhouse, "exp", out, "csv", database=database, entity="e1") == 4
    rows = list(csv.DictReader(out.open()))
    assert [r["unit_id"] for r in rows] == ["u0", "u1", "u2", "u3"]
    assert [(r["reward"], r["rewarded"], r["reward_events"]) for r in rows] == [
        ("1.0", "True", "2"),  # two clicks: reward 1, once
        ("0.0", "False", "0"),  # late
        ("0.0", "False", "0"),  # a "view" is not the reward
        ("0.0", "True", "1"),  # an observed 0; the health report is not a reward
    ]
    assert rows[0]["context"] == '{"page":"p0"}' and rows[0]["propensity"] == "0.5" and rows[0]["weights_version"] == "3"
    e2 = tmp_path / "e2.csv"
    assert export(clickhouse, "exp", e2, "csv", database=database, entity="e2") == 3  # u4 once
    assert [(r["unit_id"], r["in_experiment"], r["reward"]) for r in csv.DictReader(e2.open())] == [
        ("u4", "True", "0.0"), ("u5", "True", "0.0"), ("u6", "False", "0.0")]


def test_the_attribution_window_is_the_latest_spec_s(clickhouse, database, tmp_path: Path) -> None:
    load(clickhouse, database, 1, attribution_hours=24)
    out = tmp_path / "e1.csv"
    export(clickhouse, "exp", out, "csv", database=database, entity="e1")
    assert [r["reward"] for r in csv.DictReader(out.open())][1] == "0.0"
    land_spec(clickhouse, database, spec("exp", ["a", "b"], attribution_hours=36, spec_version=2))
    export(clickhouse, "exp", out, "csv", database=database, entity="e1")
    assert [r["reward"] for r in csv.DictReader(out.open())][1] == "1.0"  # 30 h is inside 36 h


def test_a_continuous_reward_is_summed_per_serve(clickhouse, database, tmp_path: Path) -> None:
    migrate(clickhouse, database=database)
    land_spec(clickhouse, database, spec("rev", ["a", "b"], reward_type="continuous", reward_name="revenue"))
    sid = token(1, T0, "a")
    clickhouse.insert(f"{database}.serves", [[str(uuid.uuid4()), sid, "rev", "e1", "u1", "a", True, 0.5, 1, 0, T0, {}]],
                      column_names=SERVE_COLS)
    clickhouse.insert(f"{database}.rewards", [
        reward(sid, T0 + timedelta(minutes=1), "revenue", 2.5, experiment="rev"),
        reward(sid, T0 + timedelta(minutes=2), "revenue", 4.0, experiment="rev"),
        reward(sid, T0 + timedelta(minutes=3), "click", 1.0, experiment="rev"),
        reward(sid, T0 + timedelta(hours=25), "revenue", 100.0, experiment="rev")], column_names=REWARD_COLS)
    out = tmp_path / "rev.csv"
    export(clickhouse, "rev", out, "csv", database=database)
    assert [(r["reward"], r["reward_events"]) for r in csv.DictReader(out.open())] == [("6.5", "2")]


def test_events_written_twice_give_the_same_file(clickhouse, tmp_path: Path) -> None:
    once, twice = f"t_{uuid.uuid4().hex[:10]}", f"t_{uuid.uuid4().hex[:10]}"
    load(clickhouse, once, 1)
    load(clickhouse, twice, 2)
    a, b = tmp_path / "once.csv", tmp_path / "twice.csv"
    export(clickhouse, "exp", a, "csv", database=once)
    export(clickhouse, "exp", b, "csv", database=twice)
    assert a.read_bytes() == b.read_bytes()
    assert len(a.read_text().splitlines()) == 8


def test_parquet_filters_and_errors(clickhouse, database, tmp_path: Path) -> None:
    load(clickhouse, database, 1)
    out = tmp_path / "x.parquet"
    assert export(clickhouse, "exp", out, "parquet", database=database, since=T0 + timedelta(hours=3)) == 4
    table = pq.read_table(out)
    assert table.column("unit_id").to_pylist() == ["u3", "u4", "u5", "u6"]
    assert table.schema.field("propensity").type == "double"
    assert export(clickhouse, "exp", out, "parquet", database=database, until=T0 + timedelta(hours=1)) == 1
    with pytest.raises(AttributionError, match="'nope' has no spec.*experiments there: exp"):
        export(clickhouse, "nope", out, "parquet", database=database)
    with pytest.raises(ExportError, match="no serves of experiment 'exp' match .*entity=e9"):
        export(clickhouse, "exp", out, "parquet", database=database, entity="e9")
    with pytest.raises(ExportError, match="parquet or csv"):
        export(clickhouse, "exp", out, "xlsx", database=database)
