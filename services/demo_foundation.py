"""The foundation demo behind `make demo` until the full platform demo lands.

Start the local stack (or use `KAFKA_BOOTSTRAP`), create the topics, produce a few
ServeEvents and RewardEvents as Avro single-object messages, read them back from Kafka,
decode them, land them in ClickHouse, and print what came back. Stops the broker it
started, also on Ctrl-C.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sluice.avro import SchemaSet, SingleObjectSerde
from sluice.clickhouse import connect, migrate
from sluice.config import Settings, project_root
from sluice.kafka import TopicNames, ensure_topics, entity_key, topic_specs
from sluice.kafka.io import AvroProducer, read_to_end
from sluice.local.stack import start_kafka, stop_kafka

ARMS = ["model-a", "model-b", "model-c"]


def sample_events(now_ms: int, n_serves: int = 6) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A few serves across two advertisers, and a click for every other serve."""
    serves, rewards = [], []
    for i in range(n_serves):
        serve_id = str(uuid.uuid4())
        serves.append({
            "event_id": serve_id, "serve_id": serve_id, "experiment_id": "demo-ranking",
            "entity": f"advertiser-{i % 2}", "unit_id": f"user-{i}", "arm": ARMS[i % len(ARMS)],
            "in_experiment": True, "propensity": 1 / len(ARMS), "weights_version": 1, "bucket": i * 997 % 10_000,
            "timestamp": now_ms + i, "context": {"page": "home"},
        })
        if i % 2 == 0:
            rewards.append({
                "event_id": str(uuid.uuid4()), "serve_id": serve_id, "experiment_id": "demo-ranking",
                "entity": serves[-1]["entity"], "name": "click", "value": 1.0, "timestamp": now_ms + i + 500,
                "latency_ms": 12.5, "error": False,
            })
    return serves, rewards


def _produce(bootstrap: str, serde: SingleObjectSerde, names: TopicNames, serves: list[dict[str, Any]], rewards: list[dict[str, Any]]) -> None:
    producer = AvroProducer(bootstrap, serde)
    for s in serves:
        producer.send(names.serves, entity_key(s["experiment_id"], s["entity"]), "ServeEvent", s)
    for r in rewards:
        producer.send(names.rewards, entity_key(r["experiment_id"], r["entity"]), "RewardEvent", r)
    producer.flush()


def run(settings: Settings, now_ms: int, echo: Callable[[str], None]) -> None:
    status = start_kafka(settings)
    try:
        echo(f"kafka at {status.bootstrap}" + (f" (started, ready after {status.ready_after_s:.1f} s)" if status.started_broker else ""))
        names = TopicNames("sluice")
        ensure_topics(status.bootstrap, topic_specs(names, partitions=settings.sluice_topic_partitions))
        serde = SingleObjectSerde(SchemaSet.load(project_root() / "schemas"))
        serves, rewards = sample_events(now_ms)
        _produce(status.bootstrap, serde, names, serves, rewards)
        echo(f"produced {len(serves)} serves and {len(rewards)} rewards")

        wanted = {s["event_id"] for s in serves} | {r["event_id"] for r in rewards}
        # The topics may hold earlier demo runs: read them to the end and pick out this run's events.
        messages = read_to_end(status.bootstrap, [names.serves, names.rewards])
        decoded = [(m, serde.decode(m.value)) for m in messages]
        mine = [(m, d) for m, d in decoded if d.record["event_id"] in wanted]
        echo(f"read back {len(mine)} of them from Kafka:")
        for m, d in mine:
            r = d.record
            what = f"serve  {r['arm']:8} unit={r['unit_id']}" if d.schema.endswith("ServeEvent") else f"reward {r['name']}={r['value']}"
            echo(f"  {m.topic:18} p{m.partition} @{m.offset:<4} {r['experiment_id']}/{r['entity']:13} {what}  serve={r['serve_id'][:8]}")

        client = connect(settings.clickhouse_url, path=settings.chdb_path)
        migrate(client, ttl_days=settings.sluice_clickhouse_ttl_days)
        serve_cols = list(serves[0])
        client.insert("sluice.serves", [[s[c] for c in serve_cols] for s in serves], column_names=serve_cols)
        reward_cols = list(rewards[0])
        client.insert("sluice.rewards", [[r[c] for c in reward_cols] for r in rewards], column_names=reward_cols)
        ids = [s["serve_id"] for s in serves]
        rows = client.query(
            "SELECT s.arm, count() AS serves, countIf(r.serve_id != '') AS clicks FROM sluice.serves AS s "
            "LEFT JOIN sluice.rewards AS r ON r.serve_id = s.serve_id WHERE s.serve_id IN {ids:Array(String)} "
            "GROUP BY s.arm ORDER BY s.arm", parameters={"ids": ids}).result_rows
        echo(f"ClickHouse ({settings.clickhouse_url or 'embedded, ' + str(settings.chdb_path)}): serves and clicks of this run per arm")
        for arm, n, clicks in rows:
            echo(f"  {arm:8} serves={n} clicks={clicks}")
    finally:
        if status.started_broker:
            stop_kafka(settings)
            echo("stopped the broker this demo started")
