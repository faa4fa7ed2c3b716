"""The sink's loop: consume a batch, decode, insert per (topic, partition), then commit.

Exactly the events of the topics end up in ClickHouse, once, even when the sink is killed
between an insert and its offset commit:

- every row stores the Kafka topic, partition and offset it came from; on partition
  assignment the sink resumes after the highest offset already in the table, whatever the
  committed offset says (an insert of one batch is one atomic block);
- every insert carries a deduplication token made of topic, partition and offset range, so
  an insert retried after an error that left its outcome unknown is dropped by ClickHouse.

A record that cannot be decoded, or whose rows ClickHouse refuses, goes to the dead-letter
topic with the reason; the rest of its batch is inserted.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sluice.avro import SerdeError, SingleObjectSerde
from sluice.kafka import KafkaAdapterError, TopicNames, consumer_config, producer_config
from sluice.kafka.dlq import dead_letter_headers
from streams.sink.rows import LINEAGE, ROUTES, TableRoute

log = logging.getLogger(__name__)


@dataclass
class SinkCounts:
    rows_inserted: int = 0
    messages: int = 0
    dead_letters: int = 0
    batches: int = 0
    last_event_lag_s: float = 0.0
    dead_letter_reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass(frozen=True)
class _Bad:
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str


class ClickHouseSink:
    """Consumes the event topics of `names` and writes them to `database` through `client`."""

    def __init__(
        self,
        bootstrap: str,
        client: Any,
        serde: SingleObjectSerde,
        names: TopicNames = TopicNames(),
        *,
        database: str = "sluice",
        group_id: str | None = None,
        instance_id: str | None = None,
        batch_max: int = 50_000,
        poll_timeout_s: float = 0.5,
    ) -> None:
        from confluent_kafka import Consumer, Producer

        self.client = client
        self.serde = serde
        self.names = names
        self.database = database
        self.batch_max = batch_max
        self.poll_timeout_s = poll_timeout_s
        self.counts = SinkCounts()
        self._routes = {getattr(names, topic_attr): route for topic_attr, route in ROUTES.items()}
        overrides: dict[str, Any] = {"fetch.max.bytes": 64 * 1024 * 1024, "session.timeout.ms": 10_000}
        if instance_id:
            # Static membership: a sink restarted under the same id gets its partitions back at
            # once, instead of waiting out the session of the process that died.
            overrides["group.instance.id"] = instance_id
        self._consumer = Consumer(consumer_config(bootstrap, group_id or f"{names.prefix}-clickhouse-sink", **overrides))
        self._assigned = threading.Event()
        self._subscribed = False
        self._dlq = Producer(producer_config(bootstrap))
        self._stop = threading.Event()
        # Fault injection for the crash tests: SIGKILL ourselves right after the n-th insert,
        # before its offsets are committed (the worst moment for duplicates).
        self._kill_after_inserts = int(os.environ.get("SLUICE_FAULT_KILL_AFTER_INSERTS", "0"))
        self._inserts = 0

    # -- resuming -------------------------------------------------------------------
    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        """Start each partition after the newest offset its table already holds."""
        stored: dict[tuple[str, int], int] = {}
        for topic in {p.topic for p in partitions}:
            table = self._routes[topic].table
            for part, max_offset in self.client.query(
                f"SELECT _partition, max(_offset) FROM {self.database}.{table} WHERE _topic = {{t:String}} GROUP BY _partition",
                parameters={"t": topic},
            ).result_rows:
                stored[(topic, part)] = max_offset
        committed = {(p.topic, p.partition): p.offset for p in consumer.committed(partitions, timeout=10)}
        for p in partitions:
            in_table = stored.get((p.topic, p.partition))
            if in_table is not None and in_table + 1 > committed.get((p.topic, p.partition), -1):
                p.offset = in_table + 1
        consumer.assign(partitions)
        self._assigned.set()

    # -- the loop ---------------------------------------------------------------------
    def run(self, *, until: Callable[[], bool] | None = None, stop_when_idle_s: float | None = None) -> None:
        """Consume until `stop()` is called, `until()` says so, or (with `stop_when_idle_s`)
        nothing arrived for that many seconds since partitions were assigned)."""
        last_message = time.monotonic()
        try:
            while not self._stop.is_set() and not (until and until()):
                if self.step() or not self._assigned.is_set():
                    last_message = time.monotonic()
                elif stop_when_idle_s is not None and time.monotonic() - last_message > stop_when_idle_s:
                    break
        finally:
            self.close()

    def stop(self) -> None:
        """Ask `run()` to return after the batch in hand (safe from a signal handler)."""
        self._stop.set()

    def close(self) -> None:
        self._consumer.close()
        self._dlq.flush(10)

    @property
    def assigned(self) -> bool:
        """True once the consumer group gave this sink its partitions."""
        return self._assigned.is_set()

    def step(self) -> int:
        """One batch: consume, insert per partition, flush dead letters, commit. Returns messages handled."""
        if not self._subscribed:
            self._consumer.subscribe(list(self._routes), on_assign=self._on_assign)
            self._subscribed = True
        messages = self._consumer.consume(num_messages=self.batch_max, timeout=self.poll_timeout_s)
        if not messages:
            return 0
        by_partition: dict[tuple[str, int], list[Any]] = defaultdict(list)
        for m in messages:
            if m.error() is not None:
                log.warning("consumer error on %s[%s]: %s", m.topic(), m.partition(), m.error())
                continue
            by_partition[(m.topic(), m.partition())].append(m)
        newest_event_ms = 0
        for (topic, partition), batch in by_partition.items():
            newest_event_ms = max(newest_event_ms, self._write_partition_batch(topic, partition, batch))
        self._consumer.commit(asynchronous=False)
        self.counts.messages += len(messages)
        self.counts.batches += 1
        if newest_event_ms:
            self.counts.last_event_lag_s = max(0.0, time.time() - newest_event_ms / 1000)
        return len(messages)

    def _write_partition_batch(self, topic: str, partition: int, batch: list[Any]) -> int:
        route = self._routes[topic]
        rows: list[tuple[Any, ...]] = []
        row_offsets: list[int] = []
        bad: list[_Bad] = []
        newest = 0
        for m in batch:
            offset = m.offset()
            try:
                decoded = self.serde.decode(m.value() or b"", expected=route.schema)
                for row in route.rows(decoded.record):
                    rows.append(row + (topic, partition, offset))
                    row_offsets.append(offset)
                ts = decoded.record.get("timestamp") or decoded.record.get("computed_at") or 0
                newest = max(newest, ts)
            except (SerdeError, KeyError, TypeError) as exc:
                bad.append(_Bad(offset, m.key(), m.value(), f"{type(exc).__name__}: {exc}"))
        # Dead letters are delivered before the rows that move the resume point past them.
        self._dead_letter(topic, partition, bad)
        self._insert(route, topic, partition, rows, row_offsets, {m.offset(): m for m in batch})
        return newest

    def _insert(self, route: TableRoute, topic: str, partition: int, rows: list[tuple[Any, ...]], offsets: list[int],
                by_offset: dict[int, Any]) -> None:
        """Insert `rows`; if ClickHouse refuses, split until the refused messages are isolated."""
        if not rows:
            return
        token = f"{topic}:{partition}:{offsets[0]}-{offsets[-1]}"
        try:
            self.client.insert(f"{self.database}.{route.table}", rows, column_names=route.columns + LINEAGE,
                               settings={"insert_deduplication_token": token})
            self.counts.rows_inserted += len(rows)
            self._inserts += 1
            if self._inserts == self._kill_after_inserts:
                os.kill(os.getpid(), signal.SIGKILL)
        except Exception as exc:  # noqa: BLE001 - the server says why; the rows are split below
            if offsets[0] == offsets[-1]:  # one message: its rows are the problem
                m = by_offset[offsets[0]]
                self._dead_letter(topic, partition, [_Bad(offsets[0], m.key(), m.value(), f"ClickHouse refused the rows: {exc}")])
                return
            cut = next(i for i, o in enumerate(offsets) if o > offsets[(len(offsets) - 1) // 2])
            self._insert(route, topic, partition, rows[:cut], offsets[:cut], by_offset)
            self._insert(route, topic, partition, rows[cut:], offsets[cut:], by_offset)

    def _dead_letter(self, topic: str, partition: int, bad: list[_Bad]) -> None:
        """Send `bad` to the dead-letter topic and wait for the broker to have them."""
        if not bad:
            return
        for b in bad:
            self._dlq.produce(self.names.dlq, key=b.key, value=b.value,
                              headers=dead_letter_headers(b.reason, topic, partition, b.offset, "clickhouse-sink"))
            self.counts.dead_letters += 1
            self.counts.dead_letter_reasons[b.reason.split(":", 1)[0]] += 1
        if self._dlq.flush(30):
            raise KafkaAdapterError(f"dead letters from {topic}[{partition}] not delivered within 30 s; not committing")
