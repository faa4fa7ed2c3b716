"""Airtight logging: with the broker stopped, records spill to disk; when it is back, all of
them arrive, in order per key, none twice."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

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
