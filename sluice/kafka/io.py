"""Producing Avro records and reading topics back, for tools, tests and the demo.

The hot paths of the stream processors and the sidecar have their own tuned clients; these
helpers favour clarity: every delivery is confirmed, every failure is raised.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sluice.avro import Serde
from sluice.kafka.clients import consumer_config, producer_config
from sluice.kafka.exceptions import KafkaAdapterError
from sluice.kafka.security import PLAINTEXT, KafkaSecurity


@dataclass(frozen=True)
class RawMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class AvroProducer:
    """A confluent-kafka producer that encodes records with a `Serde` and confirms delivery."""

    def __init__(self, bootstrap: str, serde: Serde, *, security: KafkaSecurity = PLAINTEXT, **overrides: Any) -> None:
        from confluent_kafka import Producer

        self._producer: Any = Producer(producer_config(bootstrap, security, **overrides))
        self._serde = serde
        self._failures: list[str] = []
        self.delivered = 0

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err}")
        else:
            self.delivered += 1

    def send(self, topic: str, key: bytes, schema: str, record: dict[str, Any]) -> None:
        """Encode and queue one record (raises `EncodeError` at once if it does not fit)."""
        self.send_raw(topic, key, self._serde.encode(schema, record))

    def send_raw(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
        if self._producer is None:
            raise KafkaAdapterError(f"this producer is closed; nothing more can be sent to {topic}")
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for every queued record; return how many were delivered in total."""
        remaining = 0 if self._producer is None else self._producer.flush(timeout_s)
        if remaining:
            raise KafkaAdapterError(f"{remaining} records not delivered within {timeout_s:.0f} s")
        if self._failures:
            raise KafkaAdapterError(f"{len(self._failures)} records failed delivery, first: {self._failures[0]}")
        return self.delivered

    def close(self, timeout_s: float = 30.0) -> int:
        """Flush, then let the client go now rather than whenever it is collected (a client
        left behind keeps reconnecting, and logging so, after its broker stops)."""
        delivered = self.flush(timeout_s)
        self._producer = None
        return delivered


def read_topics(
    bootstrap: str,
    topics: list[str],
    *,
    count: int | None,
    security: KafkaSecurity = PLAINTEXT,
    timeout_s: float = 30.0,
    stop_at: dict[tuple[str, int], int] | None = None,
) -> list[RawMessage]:
    """Read every partition of `topics` from the beginning until `count` messages arrived
    (or, with `stop_at`, until each listed partition reached its end offset).

    Uses manual assignment (no consumer group). Raises `KafkaAdapterError` on timeout,
    saying how many messages did arrive.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(consumer_config(bootstrap, "sluice-reader-unused", security, **{"enable.partition.eof": True}))
    try:
        metadata = consumer.list_topics(timeout=10)
        assignment = []
        for topic in topics:
            if topic not in metadata.topics or metadata.topics[topic].error is not None:
                raise KafkaAdapterError(f"topic {topic} does not exist at {bootstrap}")
            assignment += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.topics[topic].partitions]
        consumer.assign(assignment)
        out: list[RawMessage] = []
        pending = dict(stop_at or {})
        deadline = time.monotonic() + timeout_s

        def done() -> bool:
            return not pending if stop_at is not None else len(out) >= (count or 0)

        while not done():
            if time.monotonic() > deadline:
                wanted = f"{count}" if stop_at is None else "the end offsets"
                raise KafkaAdapterError(f"read {len(out)} messages of {wanted} from {', '.join(topics)} within {timeout_s:.0f} s")
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                tp = (msg.topic(), msg.partition())
                if msg.error() is not None:
                    # The end of a partition: with transactions, the last offsets are commit
                    # markers that no message carries, so the end shows as an EOF event.
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        if tp in pending and msg.offset() >= pending[tp]:
                            del pending[tp]
                        continue
                    raise KafkaAdapterError(f"consuming {msg.topic()}: {msg.error()}")
                if stop_at is not None:
                    if tp not in pending:
                        continue
                    if msg.offset() + 1 >= pending[tp]:
                        del pending[tp]
                out.append(RawMessage(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), tuple(msg.headers() or ())))
        return out[:count] if stop_at is None and count is not None else out
    finally:
        consumer.close()


def read_to_end(bootstrap: str, topics: list[str], *, security: KafkaSecurity = PLAINTEXT,
                timeout_s: float = 30.0) -> list[RawMessage]:
    """Read every partition of `topics` from the beginning up to its end as of the call."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(consumer_config(bootstrap, "sluice-reader-unused", security))
    try:
        metadata = consumer.list_topics(timeout=10)
        ends: dict[tuple[str, int], int] = {}
        for topic in topics:
            if topic not in metadata.topics or metadata.topics[topic].error is not None:
                raise KafkaAdapterError(f"topic {topic} does not exist at {bootstrap}")
            for p in metadata.topics[topic].partitions:
                low, high = watermarks(consumer, TopicPartition(topic, p))
                if high > low:
                    ends[(topic, p)] = high
    finally:
        consumer.close()
    if not ends:
        return []
    return read_topics(bootstrap, topics, count=None, security=security, timeout_s=timeout_s, stop_at=ends)


def watermarks(consumer: Any, tp: Any, attempts: int = 20) -> tuple[int, int]:
    """Low and high offsets of a partition, retrying the errors of a topic just created
    (its leader not elected yet) for a few seconds."""
    from confluent_kafka import KafkaError, KafkaException

    settling = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART}
    for attempt in range(attempts):
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            return low, high
        except KafkaException as exc:
            error = exc.args[0]
            if not (error.retriable() or error.code() in settling) or attempt == attempts - 1:
                raise KafkaAdapterError(f"offsets of {tp.topic}[{tp.partition}]: {error.str()}") from exc
            time.sleep(0.25)
    raise AssertionError("unreachable")
