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
from sluice.core.spec import ExperimentSpec, spec_from_record
from sluice.errors import SluiceError
from sluice.kafka.dlq import dead_letter_headers
from sluice.kafka.follower import CompactedTopicFollower
from sluice.kafka.partitions import partition_for_key
from sluice.kafka.security import PLAINTEXT, KafkaSecurity
from sluice.kafka.topics import TopicNames
from sluice.kafka.transactions import (
    GroupConsumer,
    TransactionAborted,
    TransactionalProducer,
    end_offset,
    read_partition,
)
from sluice.metrics import StreamMetrics
from streams.peers import PeerStatistics
from streams.processor import REWARDS_TOPIC, SERVES_TOPIC, BatchResult, InputEvent, Processor
from streams.publisher import Publication, decision_record, publication_round
from streams.state import RS, EntityState, allocation_key, entity_of, experiment_of, header_key
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
    security: KafkaSecurity = PLAINTEXT
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

    def __init__(self, bootstrap: str, topic: str, serde: SingleObjectSerde, *, security: KafkaSecurity = PLAINTEXT) -> None:
        self._serde = serde
        self._follower: CompactedTopicFollower[ExperimentSpec] = CompactedTopicFollower(bootstrap, topic, self._decode,
                                                                                        security=security)

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

    def all(self) -> dict[str, ExperimentSpec]:
        return {k.decode(): s for k, s in list(self._follower.latest.items())}


@dataclass
class _Outbox:
    """Everything one transaction writes."""

    result: BatchResult = field(default_factory=BatchResult)
    tables: list[tuple[bytes, EntityState, Publication]] = field(default_factory=list)
    decisions: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    alerts: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        r = self.result
        return bool(r.writes or r.dead_letters or r.applied or r.outcomes or self.tables or self.decisions
                    or self.alerts)


class Worker:
    """See the module docstring. `run()` until `stop()` (or a signal handler calling it)."""

    def __init__(self, config: WorkerConfig, serde: SingleObjectSerde, metrics: StreamMetrics) -> None:
        self.config = config
        self.names = TopicNames(config.prefix)
        self.serde = serde
        self.metrics = metrics
        self.specs = SpecBook(config.bootstrap, self.names.experiments, serde, security=config.security)
        self.peers = PeerStatistics(config.bootstrap, self.names.weights, serde, security=config.security)
        self.kind_of = {self.names.serves: SERVES_TOPIC, self.names.rewards: REWARDS_TOPIC}
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = LocalStore(config.data_dir / "state", cache_bytes=config.cache_bytes,
                                write_buffer_bytes=config.write_buffer_bytes)
        self.consumer = GroupConsumer(config.bootstrap, config.group_id, [self.names.serves, self.names.rewards],
                                      security=config.security, instance_id=config.instance_id, session_timeout_s=config.session_timeout_s,
                                      prefetch_bytes=config.prefetch_bytes, on_assign=self._on_assign,
                                      on_revoke=self._on_revoke)
        self.producer = TransactionalProducer(config.bootstrap, f"{config.group_id}-{self._worker_id()}",
                                              security=config.security, timeout_s=config.transaction_timeout_s)
        self.partitions = self.consumer.partitions(self.names.serves)
        if self.consumer.partitions(self.names.rewards) != self.partitions:
            raise WorkerError(f"{self.names.rewards} must have the partitions of {self.names.serves} "
                              f"({self.partitions}): a reward meets its serve's state only in the same partition")
        self.processor = Processor(serde, self.specs.get, self.store, now_ms=lambda: int(time.time() * 1000),
                                   partition_of=self.partition_of, max_future_ms=config.max_future_ms,
                                   dedup_ms=config.dedup_ms, max_message_bytes=config.max_message_bytes)
        self.owned: set[int] = set()
        self.dirty: set[bytes] = set()
        self._judged: dict[bytes, float] = {}  # routing → monotonic time of its latest decision
        self._specs_seen: dict[str, ExperimentSpec] = {}  # as of the last publication tick
        self._next_publish = self._next_expire = 0.0
        self._largest: dict[str, int] = defaultdict(int)
        self._stopping = False

    def partition_of(self, routing: bytes) -> int:
        """The input partition of an (experiment, entity): where its events and its state are."""
        return partition_for_key(routing, self.partitions)

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

    # -- lifecycle --------------------------------------------------------------------------

    def run(self) -> None:
        self.specs.start()
        self.peers.start()
        self.producer.init()  # also aborts what a previous run with our id left open
        self.consumer.subscribe()
        try:
            while not self._stopping:
                self.step()
        finally:
            self.consumer.close()  # leaves the group (revoking our partitions)
            self.specs.stop()
            self.peers.stop()
            self.store.close()

    def stop(self) -> None:
        """Ask `run()` to return after the batch in hand (safe from a signal handler)."""
        self._stopping = True

    def step(self) -> None:
        """One turn of the loop: consume, process, publish if due, commit."""
        events = [InputEvent(self.kind_of[m.topic], m.topic, m.partition, m.offset, m.key, m.value, m.timestamp_ms)
                  for m in self.consumer.consume(self.config.batch_max, self.config.batch_within_s)]
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

    # -- rebalancing ---------------------------------------------------------------------------

    def _on_assign(self, partitions: set[int]) -> None:
        new = partitions - self.owned
        if new:
            started = time.monotonic()
            for p in sorted(new):
                self._recover(p)
            self.owned |= new
            states = self.store.entities(lambda routing: self.partition_of(routing) in new)
            self.processor.states.update(states)
            self.dirty |= {routing for routing, state in states.items() if state.dirty}
            self.metrics.recovery_seconds.set(time.monotonic() - started)
        self.metrics.partitions.set(len(self.owned))

    def _on_revoke(self, partitions: set[int]) -> None:
        gone = partitions & self.owned
        self.owned -= gone
        for routing in [r for r in self.processor.states if self.partition_of(r) in gone]:
            del self.processor.states[routing]
            self.dirty.discard(routing)
        self.metrics.partitions.set(len(self.owned))

    def _recover(self, partition: int) -> None:
        """Bring the local store of `partition` up to the changelog's committed end."""
        topic = self.names.worker_state
        checkpoint = self.store.checkpoint(partition)
        end = end_offset(self.config.bootstrap, topic, partition, security=self.config.security)
        if checkpoint >= end:  # the changelog is younger than our copy (a recreated topic): start over
            log.warning("changelog %s[%d] ends at %d, before our checkpoint %d: reading it from the start",
                        topic, partition, end, checkpoint)
            self.store.forget([r for r in self.store.routings() if self.partition_of(r) == partition], [partition])
            checkpoint = -1
        applied = 0
        for records in read_partition(self.config.bootstrap, topic, partition, checkpoint + 1, security=self.config.security):
            self.store.apply([(k, v) for k, v, _ in records], {partition: records[-1][2]})
            applied += len(records)
        log.info("recovered %s[%d]: %d changelog records after offset %d", topic, partition, applied, checkpoint)

    # -- publication and expiry -----------------------------------------------------------------

    def _note_spec_changes(self) -> None:
        """Mark the entities that see their experiment changed since the last tick: a change
        that adds an arm for one entity leaves the others' tables alone."""
        current = self.specs.all()
        changed = {exp: self._specs_seen.get(exp) for exp, spec in current.items()
                   if (seen := self._specs_seen.get(exp)) is None or seen.spec_version != spec.spec_version}
        self._specs_seen = current
        for exp, spec in current.items():
            self.metrics.spec_version.labels(exp).set(spec.spec_version)
        for routing in self.processor.states:
            exp = experiment_of(routing)
            if exp in changed:
                before = changed[exp]
                if before is None or not before.same_for_entity(current[exp], entity_of(routing)):
                    self.dirty.add(routing)

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
            spec = spec.for_entity(entity_of(routing))  # its own arm set
            try:
                self._publish_one(routing, state, spec, now_ms, out)
            except CoreInputError as exc:  # a policy or guardrail that cannot work with these inputs
                log.error("weights of %r not computed: %s", routing, exc)
                continue
            out.result.writes[allocation_key(routing)] = state.allocation_bytes()
            out.result.writes[header_key(routing)] = state.header_bytes()
            out.result.routing_partition[routing] = self.partition_of(routing)

    def _publish_one(self, routing: bytes, state: EntityState, spec: ExperimentSpec, now_ms: int, out: _Outbox) -> None:
        entity = entity_of(routing)
        judged = self._judge(routing, state, spec, now_ms)
        done = publication_round(state, spec, routing, now_ms, decision=judged,
                                 prior=self.peers.pooled_prior(spec, entity))
        out.tables.append((routing, state, done.publication))
        out.alerts += [(spec.id.encode(), a) for a in done.alerts]
        if done.decision is not None:
            out.decisions.append((spec.id.encode(), done.decision))
        for (guardrail, arm), e_value in done.evaluation.e_values.items():
            self.metrics.health_e_value.labels(spec.id, entity, arm, guardrail).set(min(e_value, 1e300))
        if done.evaluation.srm_p_value is not None:
            self.metrics.srm_p_value.labels(spec.id, entity).set(done.evaluation.srm_p_value)

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
                out.result.routing_partition[routing] = self.partition_of(routing)
                self.metrics.expired.labels("records").inc(len(writes))
        self.metrics.state_keys.labels("entities").set(len(self.processor.states))
        self.metrics.state_bytes.set(self.store.size_on_disk())

    # -- the transaction ------------------------------------------------------------------------

    def _commit(self, out: _Outbox) -> None:
        """Write `out` and the consumed offsets in one transaction, then into the local store."""
        try:
            self.producer.begin(track={self.names.worker_state})
            self._produce_all(out)
            delivered = self.producer.commit(self.consumer)
        except TransactionAborted as exc:
            log.warning("%s: rewinding to the last committed state", exc)
            self._rewind()
            return
        checkpoints = {p: offset for (_, p), offset in delivered.items()}
        self.store.apply(out.result.writes.items(), checkpoints)
        self._count(out)

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
            routing = key[1:].partition(RS)[0]
            self._send(self.names.worker_state, key, value, partition=routing_partition[routing])
        for routing, _, publication in out.tables:
            self._send(self.names.weights, routing, self.serde.encode("WeightTable", publication.record))
        for key, record in out.decisions:
            self._send(self.names.decisions, key, self.serde.encode("Decision", record))
        for key, record in out.alerts:
            self._send(self.names.alerts, key, self.serde.encode("Alert", record))

    def _send(self, topic: str, key: bytes | None, value: bytes | None, *, headers: list[Any] | None = None,
              partition: int | None = None) -> None:
        size = len(key or b"") + len(value or b"")
        if size > self.config.max_message_bytes:
            # Only a spec with thousands of arms gets here (sizes depend on arms, not traffic).
            raise WorkerError(f"a {size}-byte message for {topic} exceeds the limit of "
                              f"{self.config.max_message_bytes} bytes (key {(key or b'')[:80]!r})")
        self._largest[topic] = max(self._largest[topic], size)
        self.producer.send(topic, key, value, partition=partition, headers=headers)

    def _rewind(self) -> None:
        """After an aborted transaction: forget what memory holds beyond the store, and
        consume again from the committed offsets."""
        owned = set(self.owned)
        self.processor.states = self.store.entities(lambda r: self.partition_of(r) in owned)
        self.dirty = {routing for routing, state in self.processor.states.items() if state.dirty}
        self.consumer.rewind()

    # -- metrics -----------------------------------------------------------------------------

    def _count(self, out: _Outbox) -> None:
        r = out.result
        for dead in r.dead_letters:
            self.metrics.rejected.labels(dead.event.kind, dead.reason).inc()
        for kind, n in r.applied.items():
            self.metrics.events.labels(kind).inc(n)
        for outcome, n in r.outcomes.items():
            self.metrics.attribution.labels(outcome).inc(n)
        for _, alert in out.alerts:
            self.metrics.health_actions.labels(alert["experiment_id"], alert["guardrail"], alert["action"]).inc()
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
            if state.newest_input_ms:
                self.metrics.freshness.observe(max(0.0, sent_at - state.newest_input_ms / 1000))

    def _topic_kind(self, topic: str) -> str:
        return topic.removeprefix(f"{self.config.prefix}.").removesuffix(".v1")

    def _update_lag(self) -> None:
        for topic, n in self.consumer.lag().items():
            self.metrics.consumer_lag.labels(self.kind_of[topic]).set(n)
