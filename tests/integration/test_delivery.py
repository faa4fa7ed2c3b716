"""Airtight logging: with the broker stopped, records spill to disk; when it is back, all of
them arrive, in order per key, none twice. Records the caller left to encode (an SDK's
serves) are encoded by the delivery thread, or by close() into the spill; one that cannot
be encoded is reported, and the others go on."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import pytest

from sluice.avro.serve_event import ServeEventWriter
from sluice.client.delivery import DurableDelivery
from sluice.kafka import TopicNames, ensure_topics, topic_specs
from sluice.kafka.io import read_to_end
from sluice.local.kafka import KafkaBroker

pytestmark = pytest.mark.integration


def test_records_logged_while_the_broker_is_down_arrive_once_it_is_back(own_broker: KafkaBroker, tmp_path: Path) -> None:
    names = TopicNames("spill")
    ensure_topics(own_broker.bootstrap, topic_specs(names, partitions=3))
    delivery = DurableDelivery(own_broker.bootstrap, tmp_path / "spill" / "serves.spill", delivery_timeout_s=1.0, probe_interval_s=0.2)
    sent: list[bytes] = []

    def log_some(n: int) -> None:
        for _ in range(n):
            value = uuid.uuid4().bytes
            sent.append(value)
            delivery.log(names.serves, f"entity-{len(sent) % 5}".encode(), value)

    try:
        log_some(300)
        assert delivery.flush(20)
        own_broker.stop()
        log_some(300)  # the broker is down: these must wait in the spill file
        deadline_ok = delivery.flush(3)
        assert not deadline_ok
        assert delivery.counts.spilled > 0 and delivery.spill_pending_bytes > 0
        own_broker.start()
        log_some(300)
        assert delivery.flush(60), f"not delivered: {delivery.counts}"
    finally:
        delivery.close()
    assert delivery.counts.dropped == 0
    got = read_to_end(own_broker.bootstrap, [names.serves])
    values = [m.value for m in got]
    assert len(values) == len(sent) == 900
    assert set(values) == set(sent), "some records never arrived"
    # Per key, records arrive in the order they were logged.
    for key in {m.key for m in got}:
        logged_order = [v for i, v in enumerate(sent, start=1) if f"entity-{i % 5}".encode() == key]
        assert [m.value for m in sorted(got, key=lambda m: m.offset) if m.key == key] == logged_order


def slow_encode(value: bytearray) -> bytes:
    """An encoder slow enough that close() finds records it has not reached yet."""
    time.sleep(0.002)
    return bytes(value)


def test_records_not_yet_encoded_at_close_are_spilled_and_arrive_after_a_restart(kafka_bootstrap, topic_prefix,
                                                                                tmp_path: Path) -> None:
    names = TopicNames(topic_prefix)
    ensure_topics(kafka_bootstrap, topic_specs(names, partitions=3))
    spill = tmp_path / "serves.spill"
    sent = [(f"entity-{i % 3}".encode(), uuid.uuid4().bytes) for i in range(600)]
    first = DurableDelivery(kafka_bootstrap, spill)
    first.encode_with(names.serves, slow_encode)
    for key, value in sent:
        first.log(names.serves, key, bytearray(value))  # not bytes: for the encoder
    first.close(timeout_s=0.3)  # ~1.2 s of encoding queued: most of it is not encoded yet
    assert first.counts.spilled > 300 and first.counts.dropped == 0
    assert first.counts.delivered + first.counts.spilled == 600
    second = DurableDelivery(kafka_bootstrap, spill)  # a restart finds the spill and replays it
    try:
        assert second.flush(30), f"not delivered: {second.counts}"
    finally:
        second.close()
    got = read_to_end(kafka_bootstrap, [names.serves])
    assert sorted(m.value for m in got) == sorted(v for _, v in sent), "lost or duplicated records"
    for key in {k for k, _ in sent}:
        assert [m.value for m in sorted(got, key=lambda m: m.offset) if m.key == key] == [v for k, v in sent if k == key]


def test_a_record_that_cannot_be_encoded_is_reported_and_the_others_arrive(kafka_bootstrap, topic_prefix, schemas,
                                                                          tmp_path: Path, caplog) -> None:
    names = TopicNames(topic_prefix)
    ensure_topics(kafka_bootstrap, topic_specs(names, partitions=3))
    writer = ServeEventWriter(schemas.latest("ServeEvent"))
    events = [{"event_id": f"e-{i}", "serve_id": f"s-{i}", "experiment_id": "exp", "entity": "site-1", "unit_id": f"u-{i}",
               "arm": "a", "in_experiment": True, "propensity": 0.5, "weights_version": 1, "bucket": i,
               "timestamp": 1_700_000_000_000 + i, "context": {"page": "bad\ud800" if i == 5 else "home"}} for i in range(10)]
    delivery = DurableDelivery(kafka_bootstrap, tmp_path / "serves.spill")
    delivery.encode_with(names.serves, writer.encode_record)
    try:
        with caplog.at_level(logging.ERROR, logger="sluice.client.delivery"):
            for event in events:
                delivery.log(names.serves, b"exp\x1fsite-1", event)
            assert delivery.flush(20), f"not delivered: {delivery.counts}"
    finally:
        delivery.close()
    assert (delivery.counts.logged, delivery.counts.delivered, delivery.counts.dropped) == (10, 9, 1)
    assert "cannot be encoded: ServeEvent field 'context' cannot be written" in caplog.text
    got = read_to_end(kafka_bootstrap, [names.serves])
    assert [m.value for m in sorted(got, key=lambda m: m.offset)] == [writer.encode_record(e) for e in events if e["bucket"] != 5]
