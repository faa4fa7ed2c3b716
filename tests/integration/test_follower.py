"""Following a compacted topic: the whole table at start, then live updates."""

from __future__ import annotations

import time

import pytest

from sluice.kafka import TopicNames, ensure_topics, topic_specs
from sluice.kafka.follower import CompactedTopicFollower
from sluice.kafka.io import AvroProducer
from sluice.avro import SingleObjectSerde

pytestmark = pytest.mark.integration


def test_follower_holds_the_latest_value_per_key_and_sees_updates_live(kafka_bootstrap: str, topic_prefix: str, serde: SingleObjectSerde) -> None:
    names = TopicNames(topic_prefix)
    ensure_topics(kafka_bootstrap, topic_specs(names, partitions=3))
    producer = AvroProducer(kafka_bootstrap, serde)
    for version in range(1, 4):
        for key in (b"a", b"b"):
            producer.send_raw(names.weights, key, f"{key.decode()}-v{version}".encode())
    producer.send_raw(names.weights, b"poison", b"\xff")
    producer.flush()

    def decode(value: bytes) -> str:
        return value.decode()  # raises on the poison record's invalid UTF-8

    follower = CompactedTopicFollower(kafka_bootstrap, names.weights, decode).start()
    try:
        assert follower.wait_ready(20)
        assert follower.latest == {b"a": "a-v3", b"b": "b-v3"}
        assert follower.rejected == 1

        producer.send_raw(names.weights, b"a", b"a-v4")
        producer.flush()
        deadline = time.monotonic() + 5
        while follower.latest[b"a"] != "a-v4" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert follower.latest[b"a"] == "a-v4"
    finally:
        follower.stop()


def test_an_empty_topic_is_ready_at_once(kafka_bootstrap: str, topic_prefix: str) -> None:
    names = TopicNames(topic_prefix)
    ensure_topics(kafka_bootstrap, topic_specs(names, partitions=1))
    follower = CompactedTopicFollower(kafka_bootstrap, names.experiments, bytes).start()
    try:
        assert follower.wait_ready(10)
        assert follower.latest == {}
    finally:
        follower.stop()
