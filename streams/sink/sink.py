"""The sink's loop: consume a batch, insert it, then commit.

Two ways from message to row. Serves and rewards, where the volume is, are handed to
ClickHouse as they are: the messages of a topic's batch that share one writer schema (the
partitions whose batches are all of it, with consecutive offsets) become one Avro container
file that ClickHouse decodes and inserts in one statement, with checks that make it refuse
whatever fastavro would (`streams.sink.avro_blocks`). Everything else, and the batches of a
block ClickHouse refuses, is decoded here record by record with `SingleObjectSerde` and
inserted as rows (`streams.sink.rows`); a record that cannot be decoded, or whose rows
ClickHouse refuses, goes to the dead-letter topic with the reason, and the rest of its batch
is inserted.

Exactly the events of the topics end up in ClickHouse, once, even when the sink is killed
between an insert and its offset commit:

- every row stores the Kafka topic, partition and offset it came from; on partition
  assignment the sink resumes after the highest offset already in the table, whatever the
  committed offset says. Each insert is one atomic block, a partition's inserts go in
  offset order, and dead letters are delivered before the insert that moves past them;
- every insert carries a deduplication token made of topic, partitions and offset ranges,
  so an insert retried after an error that left its outcome unknown is dropped by
  ClickHouse. A block is decoded here only when ClickHouse answered that it refuses it
  (nothing of it was inserted); when ClickHouse does not answer, the error stops the sink,
  and the next start resumes from what the tables hold.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sluice.avro import SerdeError, SingleObjectSerde
from sluice.avro.serde import HEADER_LEN
from sluice.clickhouse import InsertRefused, insert_from_bytes
from sluice.core.spec import SpecError
from sluice.kafka import KafkaAdapterError, TopicNames, consumer_config, producer_config
from sluice.kafka.dlq import dead_letter_headers
from sluice.kafka.security import PLAINTEXT, KafkaSecurity
from streams.sink.avro_blocks import BlockPlan, Segment, plan_blocks
from streams.sink.rows import LINEAGE, ROUTES, TableRoute

log = logging.getLogger(__name__)


@dataclass
class SinkCounts:
    rows_inserted: int = 0
    messages: int = 0
    dead_letters: int = 0
    batches: int = 0
    rows_decoded_by_clickhouse: int = 0  # of rows_inserted, those ClickHouse read from Avro blocks
    blocks_refused: int = 0  # blocks ClickHouse refused to decode, whose batches were then decoded here
    lag_s: float = 0.0  # from the Kafka timestamp of the newest message of the last batch to its commit
    dead_letter_reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass(frozen=True)
class _Bad:
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str


class ClickHouseSink:
    """Consumes the event topics of `names` and writes them to `database` through `client`.

    `clickhouse_decodes=False` decodes every record here, as all sinks did before ClickHouse
    read the Avro itself; the benchmark keeps it as a baseline.
    """

    def __init__(
        self,
        bootstrap: str,
        client: Any,
        serde: SingleObjectSerde,
        names: TopicNames = TopicNames(),
        *,
        security: KafkaSecurity = PLAINTEXT,
        database: str = "sluice",
        group_id: str | None = None,
        instance_id: str | None = None,
        batch_max: int = 50_000,
        poll_timeout_s: float = 0.5,
        clickhouse_decodes: bool = True,
    ) -> None:
        from confluent_kafka import Consumer, Producer

        self.client = client
        self.serde = serde
        self.names = names
        self.database = database
        self.batch_max = batch_max
        self.poll_timeout_s = poll_timeout_s
        self.clickhouse_decodes = clickhouse_decodes
        self.counts = SinkCounts()
        self._routes = {getattr(names, topic_attr): route for topic_attr, route in ROUTES.items()}
        self._plans: dict[tuple[str, bytes], BlockPlan | None] = {}  # (table, message header) -> plan
        overrides: dict[str, Any] = {
            "fetch.max.bytes": 64 * 1024 * 1024, "session.timeout.ms": 10_000,
            # With librdkafka's defaults (1 MiB a partition per fetch, 100k messages kept per
            # partition) consuming alone capped the sink near 170k messages/s; memory stays
            # bounded by queued.max.messages.kbytes (64 MiB).
            "max.partition.fetch.bytes": 8 * 1024 * 1024, "queued.min.messages": 1_000_000,
        }
        if instance_id:
            # Static membership: a sink restarted under the same id gets its partitions back at
            # once, instead of waiting out the session of the process that died.
            overrides["group.instance.id"] = instance_id
        self._consumer = Consumer(consumer_config(bootstrap, group_id or f"{names.prefix}-clickhouse-sink", security, **overrides))
        self._assigned = threading.Event()
        self._subscribed = False
        self._dlq = Producer(producer_config(bootstrap, security))
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
    def run(self, *, until: Callable[[], bool] | None = None, stop_when_idle_s: float | None = None,
            every: Sequence[tuple[float, Callable[[], None]]] = ()) -> None:
        """Consume until `stop()` is called, `until()` says so, or (with `stop_when_idle_s`)
        nothing arrived for that many seconds since partitions were assigned). `every`:
        (interval in seconds, job) pairs run between batches, each first after one interval
        (the continuous offline evaluation runs here: the embedded ClickHouse belongs to
        this process). A job's failure is logged; the sink goes on."""
        last_message = time.monotonic()
        due = [time.monotonic() + interval for interval, _ in every]
        try:
            while not self._stop.is_set() and not (until and until()):
                if self.step() or not self._assigned.is_set():
                    last_message = time.monotonic()
                elif stop_when_idle_s is not None and time.monotonic() - last_message > stop_when_idle_s:
                    break
                for i, (interval, job) in enumerate(every):
                    if time.monotonic() >= due[i]:
                        due[i] = time.monotonic() + interval
                        try:
                            job()
                        except Exception:  # noqa: BLE001 - a periodic job must not stop the sink
                            log.exception("periodic job %s failed; it runs again in %.0f s", job, interval)
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
        """One batch: consume, insert, flush dead letters, commit. Returns messages handled."""
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
        self._write(by_partition)
        self._consumer.commit(asynchronous=False)
        self.counts.messages += len(messages)
        self.counts.batches += 1
        newest_ms = max((b[-1].timestamp()[1] for b in by_partition.values()), default=0)
        if newest_ms > 0:
            self.counts.lag_s = max(0.0, time.time() - newest_ms / 1000)
        return len(messages)

    def _write(self, by_partition: dict[tuple[str, int], list[Any]]) -> None:
        """Insert each partition's batch once, in one of two ways: the batches ClickHouse can
        decode go in one block per topic and writer schema, the others are decoded here, and
        so are the batches of a block ClickHouse refuses."""
        blocks: dict[tuple[str, bytes], tuple[BlockPlan, list[tuple[int, list[Any]]]]] = {}
        for (topic, partition), batch in by_partition.items():
            plan = self._block_plan(self._routes[topic], batch)
            if plan is None:
                self._write_decoded(topic, partition, batch)
            else:
                blocks.setdefault((topic, plan.header), (plan, []))[1].append((partition, batch))
        for (topic, _), (plan, batches) in blocks.items():
            if not self._insert_block(plan, topic, batches):
                for partition, batch in batches:
                    self._write_decoded(topic, partition, batch)

    # -- ClickHouse decodes -----------------------------------------------------------
    def _block_plan(self, route: TableRoute, batch: list[Any]) -> BlockPlan | None:
        """How ClickHouse can read a partition's `batch` in an Avro block, or None when the
        batch must be decoded here: the route is decoded here, the offsets have gaps (a row's
        number gives its offset), or the messages are not all of one known writer of the
        route's schema."""
        if not (self.clickhouse_decodes and route.clickhouse_decodes):
            return None
        if batch[-1].offset() - batch[0].offset() != len(batch) - 1:
            return None
        header = (batch[0].value() or b"")[:HEADER_LEN]
        if not all((m.value() or b"").startswith(header) for m in batch):
            return None
        key = (route.table, header)
        if key not in self._plans:
            try:
                writer = self.serde.writer_of(header)
            except SerdeError:
                return None  # not cached: a flood of garbage must not grow the cache
            if writer.short_name != route.schema:
                return None
            self._plans[key] = plan_blocks(writer, self.serde.schemas.latest(writer.name), route.columns,
                                           self._column_types(route.table))
        return self._plans[key]

    def _column_types(self, table: str) -> dict[str, str]:
        """The table's columns and their ClickHouse types, as the migrations made them."""
        return dict(self.client.query(
            "SELECT name, type FROM system.columns WHERE database = {d:String} AND table = {t:String} ORDER BY position",
            parameters={"d": self.database, "t": table},
        ).result_rows)

    def _insert_block(self, plan: BlockPlan, topic: str, batches: list[tuple[int, list[Any]]]) -> bool:
        """Insert the partitions' `batches` as one Avro block that ClickHouse decodes. False
        when ClickHouse refuses it: then nothing was inserted, and the caller decodes the
        batches here to find out which messages are bad and why."""
        segments = [Segment(partition, batch[0].offset(), len(batch)) for partition, batch in batches]
        token = f"{topic}:" + ",".join(f"{s.partition}:{s.first_offset}-{s.last_offset}" for s in segments)
        insert, select = plan.insert_select(f"{self.database}.{self._routes[topic].table}", topic, segments, token)
        values = [m.value() for _, batch in batches for m in batch]
        try:
            insert_from_bytes(self.client, insert, select, plan.container(values), "Avro", plan.structure)
        except InsertRefused as exc:
            self.counts.blocks_refused += 1
            log.warning("%s: decoding here the messages ClickHouse refused to decode (%s): %s", topic, token, exc)
            return False
        self.counts.rows_decoded_by_clickhouse += len(values)
        self._inserted(len(values))
        return True

    # -- decoded here -----------------------------------------------------------------
    def _write_decoded(self, topic: str, partition: int, batch: list[Any]) -> None:
        """Decode each message, dead-letter those that fail, insert the rows of the others."""
        route = self._routes[topic]
        rows: list[tuple[Any, ...]] = []
        row_offsets: list[int] = []
        bad: list[_Bad] = []
        for m in batch:
            offset = m.offset()
            try:
                decoded = self.serde.decode(m.value() or b"", expected=route.schema)
                for row in route.rows(decoded.record):
                    rows.append(row + (topic, partition, offset))
                    row_offsets.append(offset)
            except (SerdeError, SpecError, KeyError, TypeError) as exc:  # SpecError: a spec that does not validate
                bad.append(_Bad(offset, m.key(), m.value(), f"{type(exc).__name__}: {exc}"))
        # Dead letters are delivered before the rows that move the resume point past them.
        self._dead_letter(topic, partition, bad)
        self._insert(route, topic, partition, rows, row_offsets, {m.offset(): m for m in batch})

    def _insert(self, route: TableRoute, topic: str, partition: int, rows: list[tuple[Any, ...]], offsets: list[int],
                by_offset: dict[int, Any]) -> None:
        """Insert `rows`; if ClickHouse refuses, split until the refused messages are isolated."""
        if not rows:
            return
        token = f"{topic}:{partition}:{offsets[0]}-{offsets[-1]}"
        try:
            self.client.insert(f"{self.database}.{route.table}", rows, column_names=route.columns + LINEAGE,
                               settings={"insert_deduplication_token": token})
        except Exception as exc:  # noqa: BLE001 - the server says why; the rows are split below
            if offsets[0] == offsets[-1]:  # one message: its rows are the problem
                m = by_offset[offsets[0]]
                self._dead_letter(topic, partition, [_Bad(offsets[0], m.key(), m.value(), f"ClickHouse refused the rows: {exc}")])
                return
            cut = next(i for i, o in enumerate(offsets) if o > offsets[(len(offsets) - 1) // 2])
            self._insert(route, topic, partition, rows[:cut], offsets[:cut], by_offset)
            self._insert(route, topic, partition, rows[cut:], offsets[cut:], by_offset)
            return
        self._inserted(len(rows))

    def _inserted(self, rows: int) -> None:
        self.counts.rows_inserted += rows
        self._inserts += 1
        if self._inserts == self._kill_after_inserts:
            os.kill(os.getpid(), signal.SIGKILL)

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
