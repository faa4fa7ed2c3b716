"""Exactly-once loops on librdkafka: a group consumer, a transactional producer, and a reader
of a partition's committed records.

A loop that consumes, writes what it derived, and commits the consumed offsets *in the same
Kafka transaction* (KIP-447: `send_offsets_to_transaction` with the consumer's group
metadata, so a member that lost its partitions is fenced) lands each batch entirely or not
at all. The stream worker is such a loop; these classes keep librdkafka's API and errors out
of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sluice.kafka.clients import consumer_config, producer_config
from sluice.kafka.exceptions import KafkaAdapterError
from sluice.kafka.security import PLAINTEXT, KafkaSecurity

log = logging.getLogger(__name__)


class TransactionAborted(KafkaAdapterError):
    """The transaction was aborted: nothing it wrote counts, the consumed offsets stand where
    they were. The loop must forget what it derived from the batch and consume it again."""


@dataclass(frozen=True, slots=True)
class Consumed:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int  # Kafka message timestamp (producer create time)


class GroupConsumer:
    """A member of consumer group `group_id` reading `topics` committed-only, with offsets
    committed by the transaction. The range assignor gives one member partition N of every
    topic: co-partitioned topics (same key, same partition count) meet in one process.
    `on_assign` / `on_revoke` get the partition numbers gained or lost, between batches."""

    def __init__(self, bootstrap: str, group_id: str, topics: list[str], *, security: KafkaSecurity = PLAINTEXT,
                 instance_id: str | None = None,
                 session_timeout_s: float = 15.0, prefetch_bytes: int = 4 << 20,
                 on_assign: Callable[[set[int]], None], on_revoke: Callable[[set[int]], None]) -> None:
        from confluent_kafka import Consumer

        self.topics = topics
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._consumer = Consumer(consumer_config(bootstrap, group_id, security, **{
            "partition.assignment.strategy": "range",
            "isolation.level": "read_committed",
            "session.timeout.ms": int(session_timeout_s * 1000),
            "fetch.max.bytes": prefetch_bytes,
            "queued.max.messages.kbytes": max(1, prefetch_bytes // 1024),
            **({"group.instance.id": instance_id} if instance_id else {}),
        }))

    def partitions(self, topic: str) -> int:
        """How many partitions `topic` has; raises `KafkaAdapterError` if it does not exist."""
        found = self._consumer.list_topics(topic, timeout=30).topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise KafkaAdapterError(f"topic {topic} does not exist; run `sluice topics create`")
        return len(found.partitions)

    def subscribe(self) -> None:
        self._consumer.subscribe(self.topics, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked)

    def _assigned(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in partitions))
        self._on_assign({tp.partition for tp in partitions})

    def _revoked(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("revoked %s", sorted((tp.topic, tp.partition) for tp in partitions))
        self._on_revoke({tp.partition for tp in partitions})

    def consume(self, max_messages: int, timeout_s: float) -> list[Consumed]:
        """The next batch (rebalance callbacks run in here); errors are logged and skipped."""
        out = []
        for m in self._consumer.consume(num_messages=max_messages, timeout=timeout_s):
            if m.error() is not None:
                log.warning("consumer error on %s[%s]: %s", m.topic(), m.partition(), m.error())
                continue
            out.append(Consumed(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1]))
        return out

    def lag(self) -> dict[str, int]:
        """Messages not yet consumed, per topic, over the partitions this member owns."""
        lag = dict.fromkeys(self.topics, 0)
        for tp in self._consumer.position(self._consumer.assignment()):
            if tp.offset < 0:
                continue  # nothing consumed from it yet
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high is not None and high >= 0:
                lag[tp.topic] += max(0, high - tp.offset)
        return lag

    def rewind(self) -> None:
        """Consume again from the committed offsets (after an aborted transaction)."""
        for tp in self._consumer.committed(self._consumer.assignment(), timeout=30):
            if tp.offset >= 0:
                self._consumer.seek(tp)

    def close(self) -> None:
        self._consumer.close()


class TransactionalProducer:
    """A producer whose writes, with a consumer's offsets, commit atomically.

    `transactional_id` must be stable for a given worker (its instance id, or an id kept in
    its data directory): `init()` then aborts what the previous run under that id left open,
    instead of readers waiting out the transaction timeout."""

    def __init__(self, bootstrap: str, transactional_id: str, *, security: KafkaSecurity = PLAINTEXT,
                 timeout_s: float = 15.0) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(producer_config(bootstrap, security, **{
            "transactional.id": transactional_id,
            "transaction.timeout.ms": int(timeout_s * 1000),
            "linger.ms": 5,
        }))
        self._tracked: set[str] = set()
        self._delivered: dict[tuple[str, int], int] = {}

    def init(self, timeout_s: float = 60.0) -> None:
        self._call(self._producer.init_transactions, timeout_s)

    def begin(self, *, track: set[str] | None = None) -> None:
        """Start a transaction; `track`: topics whose delivered offsets `commit` returns."""
        self._tracked = track or set()
        self._delivered = {}
        self._call(self._producer.begin_transaction)

    def send(self, topic: str, key: bytes | None, value: bytes | None, *, partition: int | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        kwargs: dict[str, Any] = {"key": key, "value": value, "headers": headers}
        if partition is not None:
            kwargs["partition"] = partition
        if topic in self._tracked:
            kwargs["on_delivery"] = self._on_delivery
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                return
            except BufferError:  # librdkafka's queue is full: let deliveries drain
                self._producer.poll(0.05)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            tp = (msg.topic(), msg.partition())
            self._delivered[tp] = max(self._delivered.get(tp, -1), msg.offset())

    def commit(self, consumer: GroupConsumer | None) -> dict[tuple[str, int], int]:
        """Commit the transaction with the consumer's positions (None: a producer that
        consumes nothing, writing records that must land together). Returns the highest
        offset delivered per (tracked topic, partition). Raises `TransactionAborted` after
        aborting when the broker refused it; `KafkaAdapterError` when the producer is fenced
        or broken."""
        from confluent_kafka import KafkaException

        try:
            self._producer.flush()  # delivery reports (offsets) come in before the commit
            if consumer is not None:
                c = consumer._consumer
                positions = [tp for tp in c.position(c.assignment()) if tp.offset >= 0]
                self._producer.send_offsets_to_transaction(positions, c.consumer_group_metadata())
            self._producer.commit_transaction()
        except KafkaException as exc:
            error = exc.args[0]
            if error.txn_requires_abort():
                self._call(self._producer.abort_transaction)
                raise TransactionAborted(f"transaction aborted: {error.str()}") from exc
            raise KafkaAdapterError(f"transaction failed: {error.str()}") from exc
        return dict(self._delivered)

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        from confluent_kafka import KafkaException

        try:
            fn(*args)
        except KafkaException as exc:
            raise KafkaAdapterError(f"{fn.__name__}: {exc.args[0].str()}") from exc


def read_partition(bootstrap: str, topic: str, partition: int, start: int, *, security: KafkaSecurity = PLAINTEXT,
                   batch: int = 10_000) -> Iterator[list[tuple[bytes | None, bytes | None, int]]]:
    """The committed records of one partition from offset `start` to its end as of the call,
    in batches of (key, value, offset). Aborted transactions are skipped; if a transaction is
    still open, this waits until it ends (at most the writer's transaction timeout)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    reader = Consumer(consumer_config(bootstrap, f"{topic}-reader-unused", security, **{
        "isolation.level": "read_committed", "enable.partition.eof": True, "fetch.max.bytes": 32 << 20}))
    try:
        low, high = watermarks_of(reader, topic, partition)
        start = max(start, low)
        if start >= high:
            return
        reader.assign([TopicPartition(topic, partition, start)])
        while True:
            records, eof = [], False
            for m in reader.consume(num_messages=batch, timeout=1.0):
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        eof = True
                        continue
                    raise KafkaAdapterError(f"reading {topic}[{partition}]: {m.error()}")
                records.append((m.key(), m.value(), m.offset()))
            if records:
                yield records
            if eof:
                return
    finally:
        reader.close()


def end_offset(bootstrap: str, topic: str, partition: int, *, security: KafkaSecurity = PLAINTEXT) -> int:
    """The offset after the last record of a partition (its high watermark)."""
    from confluent_kafka import Consumer

    reader = Consumer(consumer_config(bootstrap, f"{topic}-reader-unused", security))
    try:
        return watermarks_of(reader, topic, partition)[1]
    finally:
        reader.close()


def watermarks_of(consumer: Any, topic: str, partition: int) -> tuple[int, int]:
    from confluent_kafka import TopicPartition

    from sluice.kafka.io import watermarks

    return watermarks(consumer, TopicPartition(topic, partition))
