"""One attribution rule: the ClickHouse views that report, export and offline evaluation
read (`sluice.analytics.attribution`) give, per (experiment, entity) and arm over the
worker's window, exactly the statistics of the worker's latest weight table, on the same
events: duplicates, a second reward name, late rewards, health reports, a binary 0, a reward
before its serve, a reward whose serve was never logged, serves outside the experiment, and
a continuous experiment with a short window and attribution window of its own."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sluice.analytics.attribution import evaluation_log, statistics_between, window_statistics
from sluice.clickhouse import migrate
from sluice.core.serve_token import format_serve_id
from sluice.experiments import ExperimentRegistry
from sluice.kafka import TopicNames, ensure_topics, topic_specs
from sluice.kafka.io import read_to_end
from sluice.local.kafka import free_loopback_ports
from streams.sink.sink import ClickHouseSink

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stream_support import (  # noqa: E402
    DAY_MS,
    HOUR_MS,
    Traffic,
    WorkerProcess,
    bandit_spec,
    expected_statistics,
    table_statistics,
    wait_for_statistics,
)

pytestmark = pytest.mark.integration
CLICK_RATES = {"a": 0.05, "b": 0.10, "c": 0.25}


def specs() -> dict:
    binary = bandit_spec("clicks", list(CLICK_RATES))  # reward "click", 24 h attribution, 7-day window
    continuous = bandit_spec("revenue", ["x", "y"], reward_type="continuous", window_days=1, attribution_hours=6)
    continuous = continuous.model_copy(update={"reward": continuous.reward.model_copy(update={"name": "purchase"})})
    return {"clicks": binary, "revenue": continuous}


def traffic(start: int, rng: np.random.Generator) -> Traffic:
    t = Traffic()
    for j, entity in enumerate(("site-1", "site-2"), start=1):  # 1,500 serves a minute apart: 25 hours
        for i in range(1_500):
            arm = list(CLICK_RATES)[int(rng.integers(3))]
            ts = start + i * 60_000
            outside = rng.random() < 0.05
            sid = t.serve("clicks", entity, arm, ts, in_experiment=not outside)
            u = rng.random()
            if u < 0.03:
                t.events.append(t.events[-1])  # the same serve event delivered twice
            elif u < 0.06:
                t.serve("clicks", entity, arm, ts, in_experiment=not outside, serve_id=sid)  # logged twice
            if rng.random() < CLICK_RATES[arm]:
                t.reward("clicks", entity, sid, 1.0, ts + int(rng.integers(1, 3_600_000)))
                if rng.random() < 0.3:  # a second click on the same serve
                    t.reward("clicks", entity, sid, 1.0, ts + int(rng.integers(1, 3_600_000)))
            u = rng.random()
            if u < 0.05:
                t.reward("clicks", entity, sid, 1.0, ts + 24 * HOUR_MS + int(rng.integers(1, HOUR_MS)))  # late
            elif u < 0.10:
                t.reward("clicks", entity, sid, 1.0, ts + 1_000, name="view")  # not the experiment's reward
            elif u < 0.13:
                t.reward("clicks", entity, sid, 0.0, ts + 2_000)  # an observed 0
            if rng.random() < 0.2:
                t.outcome("clicks", entity, sid, ts + 500, latency_ms=float(rng.integers(5, 300)),
                          error=bool(rng.random() < 0.1))  # a health report
        early = format_serve_id("e" * 23 + str(j), start + HOUR_MS, True, "c")
        t.reward("clicks", entity, early, 1.0, start + HOUR_MS + 10)  # before its serve
        t.serve("clicks", entity, "c", start + HOUR_MS, serve_id=early)
        t.reward("clicks", entity, format_serve_id("f" * 23 + str(j), start + 2 * HOUR_MS, True, "b"), 1.0,
                 start + 2 * HOUR_MS + 10)  # its serve was never logged (assign(log=False)): counts from its token
    for i in range(1_200):  # 30 hours: the first ones leave the 1-day window
        arm = "xy"[int(rng.integers(2))]
        ts = start + i * 90_000
        sid = t.serve("revenue", "shop-1", arm, ts)
        if i % 50 == 0:
            t.events.append(t.events[-1])
        for _ in range(int(rng.integers(0, 4))):  # purchases summed per serve; dyadic values add exactly
            t.reward("revenue", "shop-1", sid, float(rng.integers(1, 400)) / 4, ts + int(rng.integers(1, 6 * HOUR_MS)))
        if rng.random() < 0.1:
            t.reward("revenue", "shop-1", sid, 50.0, ts + 6 * HOUR_MS + 1_000)  # after the 6 h attribution window
        if rng.random() < 0.1:
            t.reward("revenue", "shop-1", sid, 1.0, ts + 1_000, name="click")  # another name
        if rng.random() < 0.1:
            t.outcome("revenue", "shop-1", sid, ts + 100, latency_ms=12.0)
    # Last, each key's newest event time: a serve, so the worker publishes a table for it.
    t.serve("clicks", "site-1", "a", start + 51 * HOUR_MS)
    t.serve("clicks", "site-2", "a", start + 51 * HOUR_MS)
    t.serve("revenue", "shop-1", "x", start + 37 * HOUR_MS)
    return t


@pytest.fixture
def landed(kafka_bootstrap, topic_prefix, serde, clickhouse, database, tmp_path):
    """Specs, traffic, a worker until its tables carry the recomputed statistics, then the
    sink until ClickHouse holds every event, table and spec. Yields the worker's latest tables."""
    names = TopicNames(topic_prefix)
    ensure_topics(kafka_bootstrap, topic_specs(names, partitions=4))
    the_specs = specs()
    with ExperimentRegistry(kafka_bootstrap, topic_prefix, serde) as registry:
        for spec in the_specs.values():
            registry.apply(spec)
    start = (int(time.time() * 1000) - 3 * DAY_MS) // HOUR_MS * HOUR_MS
    events = traffic(start, np.random.default_rng(17))
    (port,) = free_loopback_ports(1)
    worker = WorkerProcess(kafka_bootstrap, topic_prefix, tmp_path / "worker.log", metrics_port=port,
                           extra_args=("--instance-id", f"{topic_prefix}-w1"), env={"SLUICE_TOPIC_PARTITIONS": "4"})
    try:
        events.produce(kafka_bootstrap, topic_prefix, serde)
        tables = wait_for_statistics(kafka_bootstrap, topic_prefix, serde, expected_statistics(events, the_specs))
    finally:
        worker.stop()
    migrate(clickhouse, database=database)
    run_sink(kafka_bootstrap, names, serde, clickhouse, database)
    yield tables, events


def run_sink(bootstrap: str, names: TopicNames, serde, client, database: str) -> None:
    """The sink, in this process, until ClickHouse holds every message the topics hold now
    (by the Kafka offsets the sink keeps in each row)."""
    topics = {names.serves: "serves", names.rewards: "rewards", names.experiments: "experiments",
              names.weights: "weights"}
    wanted: dict[tuple[str, int], int] = {}
    for m in read_to_end(bootstrap, list(topics)):
        wanted[(m.topic, m.partition)] = max(wanted.get((m.topic, m.partition), -1), m.offset)

    def landed() -> bool:
        got = {}
        for table in topics.values():
            got.update({(topic, partition): offset for topic, partition, offset in client.query(
                f"SELECT _topic, _partition, max(_offset) FROM {database}.{table} GROUP BY _topic, _partition"
            ).result_rows})
        return all(got.get(k, -1) >= v for k, v in wanted.items())

    sink = ClickHouseSink(bootstrap, client, serde, names, database=database, group_id=f"{names.prefix}-sink",
                          batch_max=2_000)
    deadline = time.monotonic() + 120
    sink.run(until=lambda: landed() or time.monotonic() > deadline)
    assert landed(), f"the sink did not land every message within 120 s: {sink.counts}"
    assert sink.counts.dead_letters == 0, dict(sink.counts.dead_letter_reasons)


def test_the_views_give_the_statistics_of_the_worker_s_latest_tables(landed, clickhouse, database) -> None:
    tables, events = landed
    assert set(tables) == {("clicks", "site-1"), ("clicks", "site-2"), ("revenue", "shop-1")}
    for (experiment, entity), table in tables.items():
        worker = table_statistics(table)
        # Over the worker's own window ...
        assert statistics_between(clickhouse, experiment, entity, table["window_start"], table["window_end"],
                                  database) == worker, (experiment, entity)
        # ... and over the window the spec and the newest event time give, which is the same.
        window = window_statistics(clickhouse, experiment, database)[entity]
        assert (window.window_start_ms, window.window_end_ms) == (table["window_start"], table["window_end"])
        assert window.arms == worker, (experiment, entity)
    # The rules mattered: all rewards of in-experiment serves, by any name and at any delay,
    # would have given other sums.
    naive = clickhouse.query(
        f"SELECT sum(r.value) FROM (SELECT * FROM {database}.rewards LIMIT 1 BY event_id) AS r "
        f"INNER JOIN {database}.serves AS s ON s.serve_id = r.serve_id "
        f"WHERE r.experiment_id = 'clicks' AND s.in_experiment").result_rows[0][0]
    attributed = sum(s[2] for e in ("site-1", "site-2") for s in table_statistics(tables[("clicks", e)]).values())
    assert naive > attributed > 0
    revenue = table_statistics(tables[("revenue", "shop-1")])
    assert sum(s[0] for s in revenue.values()) < 1_200  # the 1-day window left the first hours out


def test_the_export_holds_one_row_per_serve_with_the_worker_s_rewards(landed, clickhouse, database) -> None:
    from sluice.analytics.export import query_rows

    tables, _ = landed
    rows = query_rows(clickhouse, "clicks", database=database)
    assert len({r[0] for r in rows}) == len(rows)  # one row per serve id
    assert len(rows) == 2 * (1_500 + 2)  # every serve once, the one logged after its reward included
    for entity in ("site-1", "site-2"):
        worker = table_statistics(tables[("clicks", entity)])  # the 7-day window holds every serve
        mine = [r for r in rows if r[3] == entity]
        for arm, (serves, count, total, _) in worker.items():
            of_arm = [r for r in mine if r[5] == arm]
            assert (len(of_arm), sum(r[6] for r in of_arm)) == (serves, count)
            # The reward whose serve was never logged is in the table's sum but has no row.
            assert sum(r[11] for r in of_arm) == total - (1 if arm == "b" else 0)
        assert all(r[11] == 0 and not r[12] for r in mine if not r[6])  # outside the experiment: not attributed
        # Off-policy evaluation reads the same serves, those in the experiment.
        log = evaluation_log(clickhouse, "clicks", entity, database)
        assert log.arms == tuple(CLICK_RATES) and len(log.action) == sum(s[1] for s in worker.values())
        assert log.reward.sum() == sum(r[11] for r in mine) and log.bandit_log().n_rounds == len(log.action)
