"""The stream worker: serves and rewards in, weight tables out, exactly once.

One loop, on confluent-kafka:

    consume a batch of serves and rewards (both topics; same key, same partition count)
    → `Processor.process`: decode, validate, attribute, count; bad events become dead letters
    → every `publish_interval_s`: a WeightTable for each (experiment, entity) that changed
    → one Kafka transaction: the dead letters, the state changes (changelog), the tables,
      the decisions, and the input offsets of the batch
    → the same state changes into the local store (`streams.store`), with the changelog
      offsets they reached

A batch therefore lands entirely or not at all: after a SIGKILL at any moment the new
owner of a partition reads the changelog from its local checkpoint (only committed
transactions) and resumes the input at the committed offsets. No message grows with
traffic (see `streams.state`), and `max_message_bytes` bounds each one.

Why not Faust: Faust costs 60–200 µs of CPU per message in its own machinery (the
benchmark keeps a no-op Faust agent as the baseline), writes one changelog message per
table key, and its exactly-once mode is unreliable; a bounded, atomic multi-message state
change is what Kafka transactions give. Partitions move between workers of the group
`<prefix>-worker` with the range assignor, which keeps partition N of serves and of rewards
together.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from sluice.avro import SingleObjectSerde
from sluice.core.errors import CoreInputError
from sluice.errors import SluiceError
from sluice.core.spec import ExperimentSpec, spec_from_record
from sluice.kafka.clients import consumer_config, producer_config
from sluice.kafka.dlq import dead_letter_headers
from sluice.kafka.follower import CompactedTopicFollower
from sluice.kafka.partitions import partition_for_key
from sluice.kafka.topics import TopicNames
from sluice.metrics import StreamMetrics
from streams.processor import REWARDS_TOPIC, SERVES_TOPIC, BatchResult, InputEvent, Processor
from streams.publisher import Publication, decision_record, mark_published, next_weight_table
from streams.state import EntityState, allocation_key, experiment_of, header_key
from streams.store import LocalStore

log = logging.getLogger(__name__)
REJECTED_BY = "sluice-worker"


class WorkerError(SluiceError):
    """The worker cannot go on: topics missing or mismatched, a message over the limit."""
TRUNCATED = "sluice.truncated.bytes"


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker runs; `sluice worker` fills it from options and the environment."""

    bootstrap: str
    prefix: str = "sluice"
    data_dir: Path = Path(".data/worker")
    publish_interval_s: float = 1.0
    decision_interval_s: float = 30.0  # how often a changed (experiment, entity) is judged
    expire_interval_s: float = 30.0
    batch_max: int = 5_000
    batch_within_s: float = 0.2
    max_future_ms: int = 3_600_000
    dedup_ms: int = 24 * 3_600_000  # how long (event time) a serve id is remembered to count a duplicate once
    max_message_bytes: int = 512 * 1024  # no message the worker writes is larger
    instance_id: str | None = None  # static group membership: a restart rejoins without a rebalance
    session_timeout_s: float = 15.0
    transaction_timeout_s: float = 15.0
    # Memory that does not depend on traffic, bounded here: the RocksDB block cache and
    # memtables, and the messages librdkafka fetches ahead of the loop.
    cache_bytes: int = 8 << 20  # RocksDB block cache
    write_buffer_bytes: int = 4 << 20  # RocksDB memtable (two of them)
    prefetch_bytes: int = 4 << 20  # librdkafka's queue of fetched, not yet consumed messages, per partition

    @property
    def group_id(self) -> str:
        return f"{self.prefix}-worker"


class SpecBook:
    """The live experiment specs, followed from the compacted experiments topic."""

    def __init__(self, bootstrap: str, topic: str, serde: SingleObjectSerde) -> None:
        self._serde = serde
        self._follower: CompactedTopicFollower[ExperimentSpec] = CompactedTopicFollower(bootstrap, topic, self._decode)

    def _decode(self, value: bytes) -> ExperimentSpec:
        record = self._serde.decode(value, "ExperimentSpec").record
        return spec_from_record(record)

    def start(self, timeout_s: float = 60.0) -> None:
        self._follower.start()
        if not self._follower.wait_ready(timeout_s):
            raise TimeoutError(f"could not read the experiments topic {self._follower.topic} within {timeout_s} s")

    def stop(self) -> None:
        self._follower.stop()

    def get(self, experiment_id: str) -> ExperimentSpec | None:
        return self._follower.latest.get(experiment_id.encode())

    def versions(self) -> dict[str, tuple[int, str]]:
        return {k.decode(): (s.spec_version, s.status) for k, s in list(self._follower.latest.items())}


@dataclass
class _Outbox:
    """Everything one transaction writes."""

    result: BatchResult = field(default_factory=BatchResult)
    tables: list[tuple[bytes, EntityState, Publication]] = field(default_factory=list)
    decisions: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        r = self.result
        return bool(r.writes or r.dead_letters or r.applied or r.outcomes or self.tables or self.decisions)


class Worker:
    """See the module docstring. `run()` until `stop()` (or a signal handler calling it)."""

    def __init__(self, config: WorkerConfig, serde: SingleObjectSerde, metrics: StreamMetrics) -> None:
        from confluent_kafka import Consumer, Producer

        self.config = config
        self.names = TopicNames(config.prefix)
        self.serde = serde
        self.metrics = metrics
        self.specs = SpecBook(config.bootstrap, self.names.experiments, serde)
        self.kind_of = {self.names.serves: SERVES_TOPIC, self.names.rewards: REWARDS_TOPIC}
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = LocalStore(config.data_dir / "state", cache_bytes=config.cache_bytes,
                                write_buffer_bytes=config.write_buffer_bytes)
        self.consumer = Consumer(consumer_config(config.bootstrap, config.group_id, **{
            # range gives a consumer the same partition numbers of both topics: a serve and its
            # rewards (one key) meet in one worker. Sticky assignors do not co-partition.
            "partition.assignment.strategy": "range",
            "isolation.level": "read_committed",
            "session.timeout.ms": int(config.session_timeout_s * 1000),
            "fetch.max.bytes": config.prefetch_bytes,
            "queued.max.messages.kbytes": config.prefetch_bytes // 1024,
            **({"group.instance.id": config.instance_id} if config.instance_id else {}),
        }))
        self.producer = Producer(producer_config(config.bootstrap, **{
            "transactional.id": f"{config.group_id}-{self._worker_id()}",
            "transaction.timeout.ms": int(config.transaction_timeout_s * 1000),
            "linger.ms": 5,
        }))
        self.partitions = self._input_partitions()
        self.processor = Processor(serde, self.specs.get, self.store, now_ms=lambda: int(time.time() * 1000),
                                   partition_of=lambda key: partition_for_key(key, self.partitions),
                                   max_future_ms=config.max_future_ms, dedup_ms=config.dedup_ms,
                                   max_message_bytes=config.max_message_bytes)
        self.owned: set[int] = set()
        self.dirty: set[bytes] = set()
        self._judged: dict[bytes, float] = {}  # routing → monotonic time of its latest decision
        self._spec_versions: dict[str, tuple[int, str]] = {}
        self._next_publish = self._next_expire = 0.0
        self._largest: dict[str, int] = defaultdict(int)
        self._delivered: dict[int, int] = {}  # changelog partition → highest offset delivered in this transaction
        self._stopping = False

    def _worker_id(self) -> str:
        """A stable id for this worker's transactions: its instance id, or one kept in its
        data directory. A restarted worker with the same id aborts the transaction its
        previous run left open at once, instead of waiting for the transaction timeout."""
        if self.config.instance_id:
            return self.config.instance_id
        path = self.config.data_dir / "worker-id"
        if not path.exists():
            path.write_text(uuid.uuid4().hex[:12])
        return path.read_text().strip()

    def _input_partitions(self) -> int:
        md = self.consumer.list_topics(self.names.serves, timeout=30)
        topic = md.topics.get(self.names.serves)
        if topic is None or topic.error is not None or not topic.partitions:
            raise WorkerError(f"topic {self.names.serves} does not exist; run `sluice topics create`")
        rewards = self.consumer.list_topics(self.names.rewards, timeout=30).topics.get(self.names.rewards)
        if rewards is None or len(rewards.partitions) != len(topic.partitions):
            raise WorkerError(f"{self.names.rewards} must have the partitions of {self.names.serves} "
                               f"({len(topic.partitions)}): a reward meets its serve's state only in the same partition")
        return len(topic.partitions)

    # -- lifecycle --------------------------------------------------------------------------

    def run(self) -> None:
        self.specs.start()
        self.producer.init_transactions(60)  # also aborts what a previous run with our id left open
        self.consumer.subscribe([self.names.serves, self.names.rewards], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_revoke)
        try:
            while not self._stopping:
                self.step()
        finally:
            self.consumer.close()  # leaves the group (revoking our partitions)
            self.specs.stop()
            self.store.close()

    def stop(self) -> None:
        """Ask `run()` to return after the batch in hand (safe from a signal handler)."""
        self._stopping = True

    def step(self) -> None:
        """One turn of the loop: consume, process, publish if due, commit."""
        messages = self.consumer.consume(num_messages=self.config.batch_max, timeout=self.config.batch_within_s)
        events = []
        for m in messages:
            if m.error() is not None:
                log.warning("consumer error on %s[%s]: %s", m.topic(), m.partition(), m.error())
                continue
            events.append(InputEvent(self.kind_of[m.topic()], m.topic(), m.partition(), m.offset(), m.key(),
                                     m.value(), m.timestamp()[1]))
        out = _Outbox()
        if events:
            out.result = self.processor.process(events)
            self.dirty |= out.result.changed
            self.metrics.batch_size.observe(len(events))
        now = time.monotonic()
        if now >= self._next_publish:
            self._next_publish = now + self.config.publish_interval_s
            self._publish(out)
        if now >= self._next_expire:
            self._next_expire = now + self.config.expire_interval_s
            self._expire(out)
        if out or events:
            self._commit(out)
            self._count(out)

    # -- rebalancing ---------------------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in partitions))
        new = {tp.partition for tp in partitions} - self.owned
        if new:
            started = time.monotonic()
            for p in sorted(new):
                self._recover(p)
            self.owned |= new
            states = self.store.entities(lambda routing: partition_for_key(routing, self.partitions) in new)
            self.processor.states.update(states)
            self.dirty |= {routing for routing, state in states.items() if state.dirty}
            self.metrics.recovery_seconds.set(time.monotonic() - started)
        self.metrics.partitions.set(len(self.owned))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("revoked %s", sorted((tp.topic, tp.partition) for tp in partitions))
        gone = {tp.partition for tp in partitions} & self.owned
        if not gone:
            return
        self.owned -= gone
        for routing in [r for r in self.processor.states if partition_for_key(r, self.partitions) in gone]:
            del self.processor.states[routing]
            self.dirty.discard(routing)
        self.metrics.partitions.set(len(self.owned))

    def _recover(self, partition: int) -> None:
        """Bring the local store of `partition` up to the changelog's committed end."""
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        topic = self.names.worker_state
        checkpoint = self.store.checkpoint(partition)
        reader = Consumer(consumer_config(self.config.bootstrap, f"{self.config.group_id}-restore", **{
            "isolation.level": "read_committed", "enable.partition.eof": True, "fetch.max.bytes": 32 * 1024 * 1024}))
        try:
            low, high = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
            if checkpoint >= high:  # the changelog is younger than our copy (recreated topic): start over
                log.warning("changelog %s[%d] ends at %d, before our checkpoint %d: reading it from the start",
                            topic, partition, high, checkpoint)
                owned = [r for r in self.store.routings() if partition_for_key(r, self.partitions) == partition]
                self.store.forget(owned, [partition])
                checkpoint = -1
            start = max(checkpoint + 1, low)
            if start >= high:
                return
            reader.assign([TopicPartition(topic, partition, start)])
            applied = 0
            while True:
                msgs = reader.consume(num_messages=10_000, timeout=1.0)
                records, last = [], None
                eof = False
                for m in msgs:
                    if m.error() is not None:
                        if m.error().code() == KafkaError._PARTITION_EOF:
                            eof = True
                            continue
                        raise WorkerError(f"reading changelog {topic}[{partition}]: {m.error()}")
                    records.append((m.key(), m.value()))
                    last = m.offset()
                if last is not None:
                    self.store.apply(records, {partition: last})
                    applied += len(records)
                if eof:
                    break
            log.info("recovered %s[%d]: %d changelog records from offset %d", topic, partition, applied, start)
        finally:
            reader.close()

    # -- publication and expiry -----------------------------------------------------------------

    def _note_spec_changes(self) -> None:
        """Mark the entities of every experiment whose spec changed since the last tick."""
        current = self.specs.versions()
        changed = {exp for exp, v in current.items() if self._spec_versions.get(exp) != v}
        self._spec_versions = current
        for exp, (version, _) in current.items():
            self.metrics.spec_version.labels(exp).set(version)
        if changed:
            self.dirty |= {routing for routing in self.processor.states if experiment_of(routing) in changed}

    def _publish(self, out: _Outbox) -> None:
        self._note_spec_changes()
        self._update_lag()
        self.metrics.ticks.inc()
        now_ms = int(time.time() * 1000)
        for routing in sorted(self.dirty):
            self.dirty.discard(routing)
            spec = self.specs.get(experiment_of(routing))
            state = self.processor.states.get(routing)
            if spec is None or spec.status != "running" or state is None:
                continue  # paused, stopped, draft or unknown: nothing is published
            try:
                publication = next_weight_table(state, spec, routing, now_ms)
            except CoreInputError as exc:  # a policy or guardrail that cannot work with these inputs
                log.error("weights of %r not computed: %s", routing, exc)
                continue
            mark_published(state, publication)
            out.tables.append((routing, state, publication))
            out.result.writes[allocation_key(routing)] = state.allocation_bytes()
            decision = self._judge(routing, state, spec, now_ms)
            if decision is not None:
                out.decisions.append((spec.id.encode(), decision))
            out.result.writes[header_key(routing)] = state.header_bytes()
            out.result.routing_partition[routing] = partition_for_key(routing, self.partitions)

    def _judge(self, routing: bytes, state: EntityState, spec: ExperimentSpec, now_ms: int) -> dict[str, Any] | None:
        """Every `decision_interval_s` at most: the Decision of this (experiment, entity),
        when it differs from the last one published."""
        now = time.monotonic()
        if now - self._judged.get(routing, -1e9) < self.config.decision_interval_s:
            return None
        self._judged[routing] = now
        try:
            record = decision_record(state, spec, routing, now_ms)
        except CoreInputError as exc:  # statistics the decision rules cannot work with yet
            log.info("no decision for %r: %s", routing, exc)
            return None
        if record is None:
            return None
        summary = f"{record['verdict']}/{record['rule']}/{record['winner']}"
        if summary == state.decision:
            return None
        state.decision = summary
        return record

    def _expire(self, out: _Outbox) -> None:
        for routing in list(self.processor.states):
            spec = self.specs.get(experiment_of(routing))
            if spec is None:
                continue
            writes = self.processor.expire(routing, spec)
            if writes:
                out.result.writes.update(writes)
                out.result.routing_partition[routing] = partition_for_key(routing, self.partitions)
                self.metrics.expired.labels("records").inc(len(writes))
        self.metrics.state_keys.labels("entities").set(len(self.processor.states))
        self.metrics.state_bytes.set(self.store.size_on_disk())

    # -- the transaction ------------------------------------------------------------------------

    def _commit(self, out: _Outbox) -> None:
        """Write `out` and the consumed offsets in one transaction, then into the local store."""
        from confluent_kafka import KafkaException

        try:
            self.producer.begin_transaction()
            self._delivered = {}
            self._produce_all(out)
            self.producer.flush()
            positions = self.consumer.position(self.consumer.assignment())
            self.producer.send_offsets_to_transaction(positions, self.consumer.consumer_group_metadata())
            self.producer.commit_transaction()
        except KafkaException as exc:
            error = exc.args[0]
            if not error.txn_requires_abort():
                raise
            log.warning("transaction aborted (%s): rewinding to the last committed state", error)
            self.producer.abort_transaction()
            self._rewind()
            return
        records = list(out.result.writes.items())
        self.store.apply(records, dict(self._delivered))

    def _produce_all(self, out: _Outbox) -> None:
        limit = self.config.max_message_bytes
        for dead in out.result.dead_letters:
            ev = dead.event
            value, headers = ev.value, dead_letter_headers(dead.header, ev.topic, ev.partition, ev.offset, REJECTED_BY)
            if value is not None and len(value) > limit:  # keep what fits, and say how much there was
                headers.append((TRUNCATED, str(len(value)).encode()))
                value = value[:limit]
            self._send(self.names.dlq, ev.key, value, headers=headers, partition=ev.partition)
        routing_partition = out.result.routing_partition
        for key, value in out.result.writes.items():
            routing = key[1:].partition(b"\x1e")[0]
            self._send(self.names.worker_state, key, value, partition=routing_partition[routing], changelog=True)
        for routing, _, publication in out.tables:
            self._send(self.names.weights, routing, self.serde.encode("WeightTable", publication.record))
        for key, record in out.decisions:
            self._send(self.names.decisions, key, self.serde.encode("Decision", record))

    def _send(self, topic: str, key: bytes | None, value: bytes | None, *, headers: list[Any] | None = None,
              partition: int | None = None, changelog: bool = False) -> None:
        size = len(key or b"") + len(value or b"")
        if size > self.config.max_message_bytes:
            # Only a spec with thousands of arms gets here (sizes depend on arms, not traffic).
            raise WorkerError(f"a {size}-byte message for {topic} exceeds the limit of "
                               f"{self.config.max_message_bytes} bytes (key {key[:80]!r})")
        self._largest[topic] = max(self._largest[topic], size)
        on_delivery = self._on_changelog_delivery if changelog else None
        kwargs: dict[str, Any] = {"key": key, "value": value, "headers": headers, "on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self.producer.produce(topic, **kwargs)
                return
            except BufferError:  # librdkafka's queue is full: let deliveries drain
                self.producer.poll(0.05)

    def _on_changelog_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            p = msg.partition()
            self._delivered[p] = max(self._delivered.get(p, -1), msg.offset())

    def _rewind(self) -> None:
        """After an aborted transaction: forget what memory holds beyond the store, and
        consume again from the committed offsets."""
        owned = set(self.owned)
        self.processor.states = self.store.entities(lambda r: partition_for_key(r, self.partitions) in owned)
        self.dirty = {routing for routing, state in self.processor.states.items() if state.dirty}
        committed = self.consumer.committed(self.consumer.assignment(), timeout=30)
        for tp in committed:
            if tp.offset >= 0:
                self.consumer.seek(tp)

    # -- metrics -----------------------------------------------------------------------------

    def _count(self, out: _Outbox) -> None:
        r = out.result
        for dead in r.dead_letters:
            self.metrics.rejected.labels(dead.event.kind, dead.reason).inc()
        for kind, n in r.applied.items():
            self.metrics.events.labels(kind).inc(n)
        for outcome, n in r.outcomes.items():
            self.metrics.attribution.labels(outcome).inc(n)
        for topic, size in self._largest.items():
            self.metrics.largest_message.labels(self._topic_kind(topic)).set(size)
        sent_at = time.time()
        for _, state, publication in out.tables:
            record = publication.record
            exp = record["experiment_id"]
            self.metrics.published.labels(exp).inc()
            self.metrics.last_published.labels(exp).set(sent_at)
            for arm, weight in publication.weights.items():
                self.metrics.arm_weight.labels(exp, record["entity"], arm).set(weight)
            for rule in publication.guardrails:
                self.metrics.guardrail_actions.labels(exp, rule).inc()
            if publication.srm_p_value is not None:
                self.metrics.srm_p_value.labels(exp, record["entity"]).set(publication.srm_p_value)
            if state.newest_input_ms:
                self.metrics.freshness.observe(max(0.0, sent_at - state.newest_input_ms / 1000))

    def _topic_kind(self, topic: str) -> str:
        return topic.removeprefix(f"{self.config.prefix}.").removesuffix(".v1")

    def _update_lag(self) -> None:
        lag = {SERVES_TOPIC: 0, REWARDS_TOPIC: 0}
        for tp in self.consumer.position(self.consumer.assignment()):
            kind = self.kind_of.get(tp.topic)
            if kind is None or tp.offset < 0:
                continue
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if high is not None and high >= 0:
                lag[kind] += max(0, high - tp.offset)
        for kind, n in lag.items():
            self.metrics.consumer_lag.labels(kind).set(n)

