"""The stream worker: a Faust app that turns serves and rewards into published weight tables.

One agent reads the serves and rewards topics together (they are co-partitioned: same
key, same partition count, so Faust gives a worker the same partitions of both) in batches
(`take_events`), and hands each batch to `streams.processor.Processor`, which decodes,
validates, attributes and aggregates, writing each state key once per batch into one
table. Bad events go to the dead-letter topic with the reason; the rest of the batch goes
on. A timer publishes, every `publish_interval_s`, a new WeightTable for each (experiment,
entity) whose statistics changed; another expires serve records past attribution.

Experiment specs come from the compacted experiments topic, followed in a background
thread; a new experiment, a changed policy or arm set, a pause or a stop takes effect on
the next batch and the next publication, without restart.

Delivery is at-least-once (Faust commits offsets only after its producer has flushed the
changelog); the state makes replays harmless (see `streams.processor`). Faust's
exactly-once mode is not used: it has open reports of duplicates and crashes.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import orjson
from prometheus_client import CollectorRegistry

from sluice.avro import SchemaSet, SingleObjectSerde
from sluice.config import project_root
from sluice.core.spec import ExperimentSpec, spec_from_mapping
from sluice.kafka.dlq import dead_letter_headers
from sluice.kafka.follower import CompactedTopicFollower
from sluice.kafka.topics import TopicNames
from sluice.metrics import StreamMetrics
from streams.processor import REWARDS_TOPIC, SERVES_TOPIC, InputEvent, Processor
from streams.publisher import decision_record, mark_published, next_weight_table
from streams.state import EntityState, experiment_of, partition_of

log = logging.getLogger(__name__)
REJECTED_BY = "sluice-worker"


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker runs; `sluice worker` fills it from options and the environment."""

    bootstrap: str
    prefix: str = "sluice"
    partitions: int = 6
    replication_factor: int = 1
    store: str = "memory://"  # or "rocksdb://" (RocksDB via rocksdict) for production
    data_dir: Path = Path(".data/worker")
    publish_interval_s: float = 1.0
    decision_interval_s: float = 30.0  # how often a changed (experiment, entity) is judged
    expire_interval_s: float = 30.0
    batch_max: int = 5_000
    batch_within_s: float = 0.2
    commit_interval_s: float = 1.0
    max_future_ms: int = 3_600_000
    orphan_grace_ms: int = 3_600_000
    web_port: int | None = None  # Faust's web views (tables); loopback only, off by default
    instance_id: str | None = None  # static group membership: a restart rejoins without a rebalance
    session_timeout_s: float = 15.0

    @property
    def app_id(self) -> str:
        return f"{self.prefix}-worker"


class SpecBook:
    """The live experiment specs, followed from the compacted experiments topic."""

    def __init__(self, bootstrap: str, topic: str, serde: SingleObjectSerde) -> None:
        self._serde = serde
        self._follower: CompactedTopicFollower[ExperimentSpec] = CompactedTopicFollower(bootstrap, topic, self._decode)

    def _decode(self, value: bytes) -> ExperimentSpec:
        record = self._serde.decode(value, "ExperimentSpec").record
        return spec_from_mapping(orjson.loads(record["spec_json"]))

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


class RoutedTable(faust.Table):
    """A table whose keys go to the changelog partition of their routing key (see
    `streams.state`): the partition their input events came from, with or without an
    event in context (batches and timers have none)."""

    def partition_for_key(self, key: Any) -> int:
        return partition_of(key, self.changelog_topic.partitions or self.app.conf.topic_partitions)


def _logged(timer: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A timer body whose failure is logged and retried on the next tick: an exception in
    a Faust timer would otherwise stop the whole worker."""

    @functools.wraps(timer)
    async def guarded() -> None:
        try:
            await timer()
        except Exception:  # noqa: BLE001 - logged with its traceback; the next tick tries again
            log.exception("%s failed; retrying on the next tick", timer.__name__)

    return guarded


class Worker:
    """Builds the Faust app for `config` and holds what its agent and timers share."""

    def __init__(self, config: WorkerConfig, *, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.names = TopicNames(config.prefix)
        self.serde = SingleObjectSerde(SchemaSet.load(project_root() / "schemas"))
        self.specs = SpecBook(config.bootstrap, self.names.experiments, self.serde)
        self.metrics = StreamMetrics.create(registry or CollectorRegistry())
        self.dirty: set[bytes] = set()
        self._rebuild = True  # fold the owned deltas into memory after start and every rebalance
        self._judged: dict[bytes, float] = {}  # routing -> monotonic time of its latest decision
        self._spec_versions: dict[str, tuple[int, str]] = {}
        self.app = self._build_app()

    def _build_app(self) -> faust.App:
        c = self.config
        app = faust.App(
            c.app_id,
            broker=f"kafka://{c.bootstrap}",
            store=c.store,
            datadir=str(c.data_dir),
            topic_partitions=c.partitions,
            topic_replication_factor=c.replication_factor,
            table_standby_replicas=0,
            processing_guarantee="at_least_once",
            broker_commit_interval=c.commit_interval_s,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            consumer_group_instance_id=c.instance_id,
            broker_session_timeout=c.session_timeout_s,
            web_enabled=c.web_port is not None,
            web_bind="127.0.0.1",
            web_host="127.0.0.1",
            web_port=c.web_port or 6066,
            logging_config=None,
        )
        self.table = app.tables.add(RoutedTable(  # bytes in and out: the "raw" codec, no JSON
            app, name="state", beacon=app.tables.beacon, partitions=c.partitions, key_type=bytes, value_type=bytes,
            help="Per (experiment, entity) deltas: statistics, input offsets and the serve records a batch changed.",
        ))
        # A batch writes one delta per (experiment, entity) it touched; let them all queue
        # before Faust's producer buffer throttles the stream.
        app.producer.buffer.max_messages = 4 * c.batch_max
        self.kind_of = {self.names.serves: SERVES_TOPIC, self.names.rewards: REWARDS_TOPIC}
        inputs = app.topic(self.names.serves, self.names.rewards, key_serializer="raw", value_serializer="raw")
        self.dlq = app.topic(self.names.dlq, key_serializer="raw", value_serializer="raw")
        self.weights = app.topic(self.names.weights, key_serializer="raw", value_serializer="raw")
        self.decisions = app.topic(self.names.decisions, key_serializer="raw", value_serializer="raw")
        self.processor = Processor(self.serde, self.specs.get, self.table, now_ms=lambda: int(time.time() * 1000),
                                   max_future_ms=c.max_future_ms, orphan_grace_ms=c.orphan_grace_ms)

        @app.agent(inputs, name="attribute")
        async def attribute(stream: faust.StreamT) -> None:
            async for events in stream.take_events(c.batch_max, within=c.batch_within_s):
                await self.process_batch(events)

        app.timer(c.publish_interval_s, on_leader=False, name="publish")(_logged(self.publish))
        app.timer(c.expire_interval_s, on_leader=False, name="expire")(_logged(self.expire))

        @app.on_rebalance_complete.connect
        async def _rebalanced(sender: Any, **_: Any) -> None:
            self._rebuild = True

        return app

    # -- the batch ------------------------------------------------------------------------

    async def process_batch(self, events: Iterable[Any]) -> None:
        self._sync()
        batch = [
            InputEvent(self.kind_of[m.topic], m.topic, m.partition, m.offset, m.key, m.value, int(m.timestamp * 1000))
            for m in (e.message for e in events)
        ]
        result = self.processor.process(batch)
        for dead in result.dead_letters:
            ev = dead.event
            await self.dlq.send(key=ev.key, value=ev.value,
                                headers=dead_letter_headers(dead.header, ev.topic, ev.partition, ev.offset, REJECTED_BY))
            self.metrics.rejected.labels(ev.kind, dead.reason).inc()
        for kind, n in result.applied.items():
            self.metrics.events.labels(kind).inc(n)
        for outcome, n in result.outcomes.items():
            self.metrics.attribution.labels(outcome).inc(n)
        self.metrics.batch_size.observe(len(batch))
        self.dirty |= result.changed

    # -- publication ----------------------------------------------------------------------

    def _active_partitions(self) -> set[int]:
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.names.serves}

    def _ready(self) -> bool:
        return not (self.app.rebalancing or self.app.in_recovery) and bool(self.app.consumer.assignment())

    def _sync(self) -> None:
        """After a start or a rebalance, once recovery is complete: fold the owned deltas
        into memory and look for changes not yet published."""
        if self._rebuild:
            self._rebuild = False
            active = self._active_partitions()
            self.processor.rebuild(lambda routing: partition_of(routing, self.config.partitions) in active)
            self.dirty = {routing for routing, state in self.processor.states.items() if state.dirty}

    def _note_spec_changes(self) -> None:
        """Mark the entities of every experiment whose spec changed since the last tick."""
        current = self.specs.versions()
        changed = {exp for exp, v in current.items() if self._spec_versions.get(exp) != v}
        self._spec_versions = current
        if changed:
            self.dirty |= {routing for routing in self.processor.states if experiment_of(routing) in changed}

    async def publish(self) -> None:
        if not self._ready():
            return
        self._sync()
        active = self._active_partitions()
        self.metrics.partitions.set(len(active))
        self._note_spec_changes()
        publications = []
        now_ms = int(time.time() * 1000)
        for routing in sorted(self.dirty):
            if partition_of(routing, self.config.partitions) not in active:
                continue  # another worker owns it now
            self.dirty.discard(routing)
            spec = self.specs.get(experiment_of(routing))
            state = self.processor.states.get(routing)
            if spec is None or spec.status != "running" or state is None:
                continue  # paused, stopped, draft or unknown: nothing is published
            try:
                publication = next_weight_table(state, spec, routing, now_ms)
            except ValueError as exc:  # a policy or guardrail that cannot work with these inputs
                log.error("weights of %r not computed: %s", routing, exc)
                continue
            mark_published(state, publication)
            self.processor.save(routing)
            publications.append((routing, state, publication))
        await self._update_lag()
        if not publications:
            return
        # The new versions reach the changelog before any table is sent: a crash in between
        # leaves a gap in versions, never a version published twice.
        await self.app.producer.flush()
        sent_at = time.time()
        for routing, state, publication in publications:
            record = publication.record
            await self.weights.send(key=routing, value=self.serde.encode("WeightTable", record))
            exp = record["experiment_id"]
            self.metrics.published.labels(exp).inc()
            self.metrics.last_published.labels(exp).set(sent_at)
            for arm, weight in publication.weights.items():
                self.metrics.arm_weight.labels(exp, record["entity"], arm).set(weight)
            for rule in publication.guardrails:
                self.metrics.guardrail_actions.labels(exp, rule).inc()
            if publication.srm_p_value is not None:
                self.metrics.srm_p_value.labels(exp, record["entity"]).set(publication.srm_p_value)
            await self._judge(routing, state)
            if state.newest_input_ms:
                self.metrics.freshness.observe(max(0.0, sent_at - state.newest_input_ms / 1000))

    async def _judge(self, routing: bytes, state: EntityState) -> None:
        """Every `decision_interval_s` at most: decide ship / iterate / kill / continue for
        this (experiment, entity), and publish the Decision when it differs from the last."""
        now = time.monotonic()
        if now - self._judged.get(routing, -1e9) < self.config.decision_interval_s:
            return
        self._judged[routing] = now
        spec = self.specs.get(experiment_of(routing))
        if spec is None:
            return
        try:
            record = decision_record(state, spec, routing, int(time.time() * 1000))
        except ValueError as exc:  # statistics the decision rules cannot work with yet
            log.info("no decision for %r: %s", routing, exc)
            return
        if record is None:
            return
        summary = f"{record['verdict']}/{record['rule']}/{record['winner']}"
        if summary == state.decision:
            return
        await self.decisions.send(key=spec.id.encode(), value=self.serde.encode("Decision", record))
        state.decision = summary
        self.processor.save(routing)

    async def _update_lag(self) -> None:
        lag = {SERVES_TOPIC: 0, REWARDS_TOPIC: 0}
        consumer = self.app.consumer
        for tp in consumer.assignment():
            kind = self.kind_of.get(tp.topic)
            if kind is None:
                continue
            position, highwater = await consumer.position(tp), consumer.highwater(tp)
            if position is not None and highwater is not None:  # None: nothing fetched yet
                lag[kind] += max(0, highwater - position)
        for kind, n in lag.items():
            self.metrics.consumer_lag.labels(kind).set(n)

    # -- expiry ---------------------------------------------------------------------------

    async def expire(self) -> None:
        """Drop serve records whose rewards can no longer count (kept for one more
        attribution window, so that a late reward is still told apart from an unknown
        serve) and rewards that waited longer than the grace for their serve, and fold
        each entity's deltas into one snapshot now and then."""
        if not self._ready():
            return
        self._sync()
        active = self._active_partitions()
        serves = orphans = kept = 0
        for routing in list(self.processor.records):
            spec = self.specs.get(experiment_of(routing))
            if spec is None or partition_of(routing, self.config.partitions) not in active:
                continue
            dropped, waited = self.processor.compact(routing, 2 * spec.reward.attribution_window_ms)
            serves, orphans = serves + dropped, orphans + waited
            kept += len(self.processor.records[routing])
        if serves:
            self.metrics.expired.labels("serves").inc(serves)
        if orphans:
            self.metrics.attribution.labels("unknown_serve").inc(orphans)
        self.metrics.state_keys.labels("serves").set(kept)
        self.metrics.state_keys.labels("entities").set(len(self.processor.records))
