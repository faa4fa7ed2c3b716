"""Serve and reward events through the real broker: produce with confluent-kafka, consume,
decode, compare field by field."""

from __future__ import annotations

import uuid

import pytest

from sluice.avro import SingleObjectSerde
from sluice.kafka import TopicNames, ensure_topics, entity_key, topic_specs
from sluice.kafka.io import AvroProducer, read_topics

pytestmark = pytest.mark.integration


def serve(i: int) -> dict:
    sid = str(uuid.uuid4())
    return {
        "event_id": sid, "serve_id": sid, "experiment_id": "ranking", "entity": f"advertiser-{i % 3}",
        "unit_id": f"user-{i}", "arm": ["a", "b", "c"][i % 3], "in_experiment": i % 5 != 0,
        "propensity": [0.5, 0.25, 0.25][i % 3], "weights_version": 3, "bucket": (i * 7919) % 10_000,
        "timestamp": 1_763_900_000_000 + i, "context": {"i": str(i), "unicode": "ünïcødé ✓"},
    }


def test_serves_and_rewards_come_back_field_for_field(kafka_bootstrap: str, topic_prefix: str, serde: SingleObjectSerde) -> None:
    names = TopicNames(topic_prefix)
    ensure_topics(kafka_bootstrap, topic_specs(names, partitions=3))
    serves = [serve(i) for i in range(60)]
    rewards = [
        {"event_id": str(uuid.uuid4()), "serve_id": s["serve_id"], "experiment_id": s["experiment_id"], "entity": s["entity"],
         "name": "revenue", "value": i * 0.5, "timestamp": s["timestamp"] + 1000, "latency_ms": 3.5, "error": i % 7 == 0}
        for i, s in enumerate(serves[::2])
    ]
    producer = AvroProducer(kafka_bootstrap, serde)
    for s in serves:
        producer.send(names.serves, entity_key(s["experiment_id"], s["entity"]), "ServeEvent", s)
    for r in rewards:
        producer.send(names.rewards, entity_key(r["experiment_id"], r["entity"]), "RewardEvent", r)
    assert producer.flush() == len(serves) + len(rewards)

    messages = read_topics(kafka_bootstrap, [names.serves, names.rewards], count=len(serves) + len(rewards))
    got_serves = {d.record["event_id"]: d.record for m in messages if m.topic == names.serves for d in [serde.decode(m.value, expected="ServeEvent")]}
    got_rewards = {d.record["event_id"]: d.record for m in messages if m.topic == names.rewards for d in [serde.decode(m.value, expected="RewardEvent")]}
    assert got_serves == {s["event_id"]: s for s in serves}
    assert got_rewards == {r["event_id"]: r for r in rewards}

    # A reward shares its serve's key, hence its partition: the streams rely on it.
    partition_of_serve = {serde.decode(m.value).record["serve_id"]: m.partition for m in messages if m.topic == names.serves}
    for m in messages:
        if m.topic == names.rewards:
            assert m.partition == partition_of_serve[serde.decode(m.value).record["serve_id"]]
