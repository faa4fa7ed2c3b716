"""One batch of serves and rewards → attribution and windowed counters.

This is the worker's hot path, written without Kafka so that it can be read and tested on
its own: `Processor.process(events)` takes the raw messages of a batch (both topics
mixed), decodes and validates each, sends the bad ones back as dead letters with a
reason, applies the good ones to the in-memory state of their (experiment, entity), and
returns the state writes the batch makes (see `streams.state` for the keys). The worker
writes them to the changelog in the transaction that also commits the batch's input
offsets, then to the local store; the processor reads what earlier batches stored through
`StateLookup`.

Rules (see README, "Attribution"):

* A serve adds to its arm's `serves` in the hour of its event time; an in-experiment serve
  is also an observation (`count`), with reward 0 until a reward is attributed to it. A
  serve id seen again within `dedup_ms` (event time) counts once (`duplicate_serve`).
* A reward carries its serve's arm, time and in-experiment flag in the serve id (a serve
  token). It counts when its name is the experiment's reward, it comes at most the
  attribution window after the serve (event time), and the serve was in the experiment.
  A binary reward adds 1 to `total` the first time a serve gets value 1; a continuous one
  adds its value to the serve's total (and `total_sq` moves from total² to (total +
  value)²). The counters change in the hour of the *serve*, so a window holds whole serves.
  A reward may come before its serve: it counts at once (the serve's own counts come with
  the serve).
* Hours that end before the window (newest event time of the key − window) are dropped;
  events in them are counted `too_late` and change nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from sluice.avro import (
    CorruptBodyError,
    NotSingleObjectError,
    TruncatedMessageError,
    UnexpectedSchemaError,
    UnknownFingerprintError,
)
from sluice.core.serve_token import ServeToken, ServeTokenError, format_serve_id, parse_serve_id
from sluice.core.spec import ExperimentSpec
from sluice.core.health import REQUEST_OUTCOME, srm_increment, srm_ratio
from sluice.core.sufficient import HOUR_MS, ArmCounters, latency_bucket
from sluice.kafka.clients import KEY_SEPARATOR, entity_key
from streams.state import (
    REWARDED,
    REWARDED_ONCE,
    SERVES_CHUNK,
    UNIQUE_BYTES,
    EntityState,
    Rewarded,
    encode_counters,
    entity_prefix,
    header_key,
    hour_key,
    rewarded_key,
    serve_id_key,
    serves_chunk_key,
    unique_bytes,
)

SERVES_TOPIC, REWARDS_TOPIC = "serves", "rewards"
_EXPECTED = {SERVES_TOPIC: "ServeEvent", REWARDS_TOPIC: "RewardEvent"}
_FORBIDDEN_IN_ENTITY = (KEY_SEPARATOR, "\x1e")
_SERVES, _COUNT, _TOTAL, _TOTAL_SQ = ArmCounters.SERVES, ArmCounters.COUNT, ArmCounters.TOTAL, ArmCounters.TOTAL_SQ
_SRM_OBSERVED, _SRM_EXPECTED = ArmCounters.SRM_OBSERVED, ArmCounters.SRM_EXPECTED
_OUTCOMES, _ERRORS, _LATENCY_N, _SLOW, _LATENCY = (ArmCounters.OUTCOMES, ArmCounters.ERRORS, ArmCounters.LATENCY_N,
                                                   ArmCounters.SLOW, ArmCounters.LATENCY)
_FIELDS = len(ArmCounters.FIELDS)


class StateLookup(Protocol):
    """What the processor reads of the state earlier batches stored (the local store)."""

    def get(self, key: bytes) -> bytes | None: ...

    def keys_before(self, prefix: bytes, hour: int) -> list[bytes]:
        """Keys starting with `prefix` (a kind, routing key and RS) whose hour is < `hour`."""
        ...


@dataclass(frozen=True)
class InputEvent:
    """One consumed message: which input (serves or rewards), where from, and its bytes."""

    kind: str  # SERVES_TOPIC or REWARDS_TOPIC
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int  # Kafka message timestamp (producer create time)


@dataclass(frozen=True)
class DeadLetter:
    event: InputEvent
    reason: str  # a code from a small set: the metric label
    detail: str  # one line for the dead letter's header

    @property
    def header(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass
class BatchResult:
    dead_letters: list[DeadLetter] = field(default_factory=list)
    applied: Counter[str] = field(default_factory=Counter)  # by input kind: events applied
    outcomes: Counter[str] = field(default_factory=Counter)  # attribution and serve outcomes
    changed: set[bytes] = field(default_factory=set)  # routing keys whose counters changed
    writes: dict[bytes, bytes | None] = field(default_factory=dict)  # state key → value (None: delete)
    routing_partition: dict[bytes, int] = field(default_factory=dict)  # where each routing key's state lives

    def merge(self, other: BatchResult) -> None:
        self.dead_letters += other.dead_letters
        self.applied.update(other.applied)
        self.outcomes.update(other.outcomes)
        self.changed |= other.changed
        self.writes.update(other.writes)
        self.routing_partition.update(other.routing_partition)


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass
class _Batch:
    """What one batch did to one (experiment, entity), applied to its state at the end."""

    state: EntityState
    spec: ExperimentSpec
    partition: int
    counts: dict[tuple[int, int], list[float]] = field(default_factory=dict)  # (hour, arm) → field increments
    serve_ids: dict[int, dict[bytes, None]] = field(default_factory=dict)  # hour → uniques of the serves counted
    rewarded: dict[bytes, Rewarded] = field(default_factory=dict)  # R key → record after this batch
    by_version: dict[tuple[int, int], dict[int, float]] = field(default_factory=dict)  # (hour, version) → arm → serves

    def add(self, hour: int, arm: int, index: int, amount: float) -> None:
        row = self.counts.get((hour, arm))
        if row is None:
            row = self.counts[(hour, arm)] = [0.0] * _FIELDS
        row[index] += amount


class Processor:
    """See the module docstring. `specs(experiment_id)` gives the live spec or None;
    `now_ms()` is the wall clock, used only to refuse timestamps too far in the future;
    `partitions` is the input topics' partition count (a key must arrive in its own)."""

    def __init__(
        self,
        serde: Any,
        specs: Callable[[str], ExperimentSpec | None],
        store: StateLookup,
        *,
        now_ms: Callable[[], int],
        partition_of: Callable[[bytes], int],
        max_future_ms: int = 3_600_000,
        dedup_ms: int = 24 * 3_600_000,
        max_message_bytes: int = 512 * 1024,
    ) -> None:
        self._serde = serde
        self._specs = specs
        self._store = store
        self._now_ms = now_ms
        self._partition_of = partition_of
        self.max_future_ms = max_future_ms
        self.dedup_ms = dedup_ms
        self.max_message_bytes = max_message_bytes
        # (experiment, entity) → (spec version, the entity's view of the spec, its arm names)
        self._views: dict[tuple[str, str], tuple[int, ExperimentSpec, frozenset[str]]] = {}
        self._partitions: dict[bytes, int] = {}
        self.states: dict[bytes, EntityState] = {}  # routing → state, for the partitions this worker owns

    # -- decoding and validation -------------------------------------------------------

    def _validate(self, event: InputEvent, now_ms: int) -> tuple[dict[str, Any], ExperimentSpec, ServeToken | None]:
        if event.value is None:
            raise _Rejected("undecodable", "message has no value (tombstone)")
        try:
            record = self._serde.decode(event.value, _EXPECTED[event.kind]).record
        except UnknownFingerprintError as exc:
            raise _Rejected("unknown_schema", str(exc)) from None
        except UnexpectedSchemaError as exc:
            raise _Rejected("wrong_schema", str(exc)) from None
        except (NotSingleObjectError, TruncatedMessageError, CorruptBodyError) as exc:
            raise _Rejected("undecodable", str(exc)) from None
        exp_id, entity = record["experiment_id"], record["entity"]
        if any(sep in entity for sep in _FORBIDDEN_IN_ENTITY):
            raise _Rejected("invalid_value", f"entity {entity!r} contains a control character (\\x1e or \\x1f)")
        if event.key != entity_key(exp_id, entity):
            raise _Rejected("wrong_key", f"key {event.key!r} is not the key of ({exp_id!r}, {entity!r}); "
                            f"use sluice.kafka.entity_key(experiment_id, entity)")
        expected_partition = self._partitions.get(event.key)
        if expected_partition is None:
            expected_partition = self._partitions[event.key] = self._partition_of(event.key)
        if event.partition != expected_partition:
            raise _Rejected("wrong_partition", f"key {event.key!r} belongs in partition {expected_partition} "
                            f"(murmur2, Kafka's default partitioner), not {event.partition}; "
                            f"produce with partitioner=murmur2_random")
        spec = self._specs(exp_id)
        if spec is None:
            raise _Rejected("unknown_experiment", f"experiment {exp_id!r} has no spec on the experiments topic")
        if spec.entities is not None and entity not in spec.entities:
            raise _Rejected("unknown_entity", f"entity {entity!r} is not one of experiment {exp_id!r}'s entities "
                            f"{list(spec.entities)}")
        spec, arms = self._view(spec, entity)
        if record["timestamp"] > now_ms + self.max_future_ms:
            raise _Rejected("future_timestamp", f"timestamp {record['timestamp']} is more than "
                            f"{self.max_future_ms} ms ahead of the clock ({now_ms})")
        if event.kind == SERVES_TOPIC:
            if record["arm"] not in arms:
                raise _Rejected("unknown_arm", f"arm {record['arm']!r} is not an arm of experiment {exp_id!r} "
                                f"for entity {entity!r} (arms {list(spec.arm_names)})")
            p = record["propensity"]
            if not (0.0 < p <= 1.0):  # also false for NaN
                raise _Rejected("invalid_propensity", f"propensity {p!r} is outside (0, 1]")
            sid = record["serve_id"]
            # The serve id must be the token of this very serve, or its rewards would be
            # attributed to another arm or hour than the serve counts in.
            if format_serve_id(sid[2:26], record["timestamp"], record["in_experiment"], record["arm"]) != sid:
                raise _Rejected("invalid_serve_id", self._token_mismatch(record))
            return record, spec, None
        v = record["value"]
        if not math.isfinite(v):
            raise _Rejected("invalid_value", f"reward value {v!r} is not finite")
        if spec.reward.type == "binary" and record["name"] == spec.reward.name and v not in (0.0, 1.0):
            raise _Rejected("invalid_value", f"binary reward {record['name']!r} has value {v!r}; expected 0 or 1")
        try:
            token = parse_serve_id(record["serve_id"])
        except ServeTokenError as exc:
            raise _Rejected("invalid_serve_id", str(exc)) from None
        state = self.states.get(event.key)  # type: ignore[arg-type]
        if token.arm not in arms and (state is None or token.arm not in state.arms):
            raise _Rejected("unknown_arm", f"serve id {record['serve_id']!r} names arm {token.arm!r}, which "
                            f"experiment {exp_id!r} never had (arms {list(spec.arm_names)})")
        return record, spec, token

    @staticmethod
    def _token_mismatch(record: dict[str, Any]) -> str:
        try:
            token = parse_serve_id(record["serve_id"])
        except ServeTokenError as exc:
            return str(exc)
        return (f"serve id {record['serve_id']!r} says arm {token.arm!r}, time {token.serve_ms}, in experiment "
                f"{token.in_experiment}; the serve says arm {record['arm']!r}, time {record['timestamp']}, "
                f"in experiment {record['in_experiment']}")

    def _view(self, spec: ExperimentSpec, entity: str) -> tuple[ExperimentSpec, frozenset[str]]:
        """The experiment as `entity` sees it (`ExperimentSpec.for_entity`) and its arm names,
        made once per spec version (a hot-path lookup)."""
        cached = self._views.get((spec.id, entity))
        if cached is None or cached[0] != spec.spec_version:
            view = spec.for_entity(entity)
            cached = self._views[(spec.id, entity)] = (spec.spec_version, view, frozenset(view.arm_names))
        return cached[1], cached[2]

    # -- the batch ------------------------------------------------------------------------

    def process(self, events: list[InputEvent]) -> BatchResult:
        result = BatchResult()
        now = self._now_ms()
        batches: dict[bytes, _Batch] = {}
        for event in events:
            try:
                record, spec, token = self._validate(event, now)
            except _Rejected as rej:
                result.dead_letters.append(DeadLetter(event, rej.reason, rej.detail))
                continue
            routing: bytes = event.key  # type: ignore[assignment]
            batch = batches.get(routing)
            if batch is None:
                batch = batches[routing] = _Batch(self._state(routing, spec), spec, event.partition)
            else:
                batch.spec = spec
            state = batch.state
            state.newest_input_ms = max(state.newest_input_ms, event.timestamp_ms)
            if event.kind == SERVES_TOPIC:
                self._serve(batch, routing, record, result)
            else:
                self._reward(batch, routing, record, token, result)
        for routing, batch in batches.items():
            self._finish(routing, batch, result)
        return result

    def _state(self, routing: bytes, spec: ExperimentSpec) -> EntityState:
        state = self.states.get(routing)
        if state is None:
            state = self.states[routing] = EntityState()
            for arm in spec.arm_names:
                state.arm_index(arm)
        return state

    def _in_window(self, state: EntityState, spec: ExperimentSpec, time_ms: int) -> bool:
        return state.hours.in_window(time_ms, state.max_event_ms, spec.window_ms)

    def _serve(self, batch: _Batch, routing: bytes, record: dict[str, Any], result: BatchResult) -> None:
        state, spec = batch.state, batch.spec
        serve_ms = record["timestamp"]
        hour = serve_ms // HOUR_MS
        unique = unique_bytes(record["serve_id"][2:26])
        seen = batch.serve_ids.setdefault(hour, {})
        if unique in seen or self._store.get(serve_id_key(routing, hour, unique)) is not None:
            result.outcomes["duplicate_serve"] += 1
            return
        state.max_event_ms = max(state.max_event_ms, serve_ms)
        state.first_event_ms = min(state.first_event_ms or serve_ms, serve_ms)
        result.applied[SERVES_TOPIC] += 1
        if not self._in_window(state, spec, serve_ms):
            result.outcomes["too_late"] += 1
            return
        seen[unique] = None
        arm = state.arm_index(record["arm"])
        self._origin(state, hour)
        batch.add(hour, arm, _SERVES, 1.0)
        if record["in_experiment"]:
            batch.add(hour, arm, _COUNT, 1.0)
            arms = batch.by_version.setdefault((hour, record["weights_version"]), {})
            arms[arm] = arms.get(arm, 0.0) + 1.0

    @staticmethod
    def _origin(state: EntityState, hour: int) -> None:
        if state.origin_hour < 0:
            state.origin_hour = hour

    def _reward(self, batch: _Batch, routing: bytes, record: dict[str, Any], serve: ServeToken,
                result: BatchResult) -> None:
        state, spec = batch.state, batch.spec
        state.max_event_ms = max(state.max_event_ms, record["timestamp"])
        if record["error"] is not None or record["latency_ms"] is not None:
            self._health(batch, record, serve)
        if record["name"] != spec.reward.name:
            result.outcomes["health_report" if record["name"] == REQUEST_OUTCOME else "other_reward"] += 1
            return
        result.applied[REWARDS_TOPIC] += 1
        if record["timestamp"] - serve.serve_ms > spec.reward.attribution_window_ms:
            result.outcomes["after_window"] += 1
            return
        if not serve.in_experiment:
            result.outcomes["outside_experiment"] += 1
            return
        value = record["value"]
        if spec.reward.type == "binary" and value != 1.0:
            result.outcomes["attributed"] += 1  # an observed 0: the serve already counts as one
            return
        hour = serve.hour
        key = rewarded_key(routing, hour, unique_bytes(serve.unique))
        rec = batch.rewarded.get(key)
        if rec is None:
            stored = self._store.get(key)
            rec = Rewarded() if stored is None else Rewarded.from_bytes(stored)
        if spec.reward.type == "binary":
            if rec.flags & REWARDED_ONCE:
                result.outcomes["duplicate"] += 1
                return
            new = Rewarded(rec.flags | REWARDED_ONCE, 1.0)
        else:
            new = Rewarded(rec.flags, rec.total + value)
        batch.rewarded[key] = new
        result.outcomes["attributed"] += 1
        if not self._in_window(state, spec, serve.serve_ms):
            return  # remembered (a duplicate stays a duplicate), but its hour has left the window
        arm = state.arm_index(serve.arm)
        batch.add(hour, arm, _TOTAL, new.total - rec.total)
        batch.add(hour, arm, _TOTAL_SQ, new.total * new.total - rec.total * rec.total)

    def _health(self, batch: _Batch, record: dict[str, Any], serve: ServeToken) -> None:
        """Count what a served request's outcome says of its arm's health: whether it failed,
        how long it took (in the hour of the serve, as its rewards are)."""
        state, spec = batch.state, batch.spec
        if not self._in_window(state, spec, serve.serve_ms):
            return
        arm, hour = state.arm_index(serve.arm), serve.hour
        self._origin(state, hour)
        if record["error"] is not None:
            batch.add(hour, arm, _OUTCOMES, 1.0)
            if record["error"]:
                batch.add(hour, arm, _ERRORS, 1.0)
        latency = record["latency_ms"]
        if latency is not None and math.isfinite(latency):
            batch.add(hour, arm, _LATENCY_N, 1.0)
            batch.add(hour, arm, _LATENCY + latency_bucket(latency), 1.0)
            if spec.health.latency is not None and latency > spec.health.latency.threshold:
                batch.add(hour, arm, _SLOW, 1.0)

    def _sample_ratio(self, batch: _Batch) -> None:
        """Count the batch's in-experiment serves against the weights of the table versions
        they were served under, and advance the SRM e-process (`sluice.core.health`): the
        plug-in ratio comes from the window before this batch, so the test stays valid."""
        state, spec = batch.state, batch.spec
        k = len(state.arms)
        window = state.hours.window(state.max_event_ms, spec.window_ms)
        ratio = srm_ratio(window.values[_SRM_OBSERVED, :k], window.values[_SRM_EXPECTED, :k])
        by_hour: dict[int, float] = {}
        for (hour, version), arms in batch.by_version.items():
            weights = state.weights_of(version)
            if weights is None:
                continue  # served under a table this worker no longer remembers: not tested
            observed = np.zeros(k)
            for arm, n in arms.items():
                observed[arm] = n
                batch.add(hour, arm, _SRM_OBSERVED, n)
            n_v = observed.sum()
            for arm, w in enumerate(weights[:k]):
                if w:
                    batch.add(hour, arm, _SRM_EXPECTED, n_v * w)
            w_v = np.asarray(weights[:k])
            by_hour[hour] = by_hour.get(hour, 0.0) + srm_increment(observed, w_v[None, :], [n_v], ratio)
        if not by_hour:
            return
        newest = max(max(by_hour), state.max_event_ms // HOUR_MS)
        if state.srm_first_start < 0:
            state.srm_first_start = state.origin_hour
        state.srm_log_e += [0.0] * (newest - state.srm_first_start + 1 - len(state.srm_log_e))
        for hour, delta in by_hour.items():
            upto = hour - state.srm_first_start  # starts at or before the serve's hour
            for i in range(min(upto + 1, len(state.srm_log_e))):
                state.srm_log_e[i] += delta

    def _finish(self, routing: bytes, batch: _Batch, result: BatchResult) -> None:
        """Apply a batch's increments to its entity's hours, expire the hours that left the
        window, and list the state writes."""
        state, spec, writes = batch.state, batch.spec, result.writes
        result.routing_partition[routing] = batch.partition
        if batch.by_version:
            self._sample_ratio(batch)
        if batch.counts:
            k = len(state.arms)
            by_hour: dict[int, np.ndarray] = {}
            for (hour, arm), row in batch.counts.items():
                values = by_hour.get(hour)
                if values is None:
                    values = by_hour[hour] = np.zeros((_FIELDS, k))
                values[:, arm] += row
            hours = state.hours
            for hour, values in by_hour.items():
                hours = hours.add(hour, ArmCounters(values))
            state.hours = hours
            state.changes += 1
            result.changed.add(routing)
        expired = state.hours.expired_hours(state.max_event_ms, spec.window_ms)
        if expired:
            state.hours = state.hours.expire(state.max_event_ms, spec.window_ms)
            for hour in expired:
                writes[hour_key(routing, hour)] = None
        first = state.hours.first_hour(state.max_event_ms, spec.window_ms)
        if state.srm_first_start >= 0 and first > state.srm_first_start:  # starts older than the window
            del state.srm_log_e[:first - state.srm_first_start]
            state.srm_first_start = first
        for hour in {h for h, _ in batch.counts}:
            values = state.hours.hours.get(hour)
            if values is not None:  # not expired in this very batch
                writes[hour_key(routing, hour)] = encode_counters(values)
        for hour, seen in batch.serve_ids.items():
            uniques = list(seen)
            per_chunk = (self.max_message_bytes - len(serves_chunk_key(routing, hour, 0))) // UNIQUE_BYTES
            for start in range(0, len(uniques), per_chunk):
                state.serve_chunks += 1
                writes[serves_chunk_key(routing, hour, state.serve_chunks)] = b"".join(uniques[start:start + per_chunk])
        for key, rec in batch.rewarded.items():
            writes[key] = rec.to_bytes()
        writes[header_key(routing)] = state.header_bytes()

    # -- expiry ---------------------------------------------------------------------------

    def expire(self, routing: bytes, spec: ExperimentSpec) -> dict[bytes, bytes | None]:
        """Deletes of the records of `routing` that can no longer matter: serve ids older
        than `dedup_ms` and rewarded serves older than twice the attribution window, before
        the key's newest event time."""
        state = self.states.get(routing)
        if state is None or not state.max_event_ms:
            return {}
        writes: dict[bytes, bytes | None] = {}
        serve_cutoff = (state.max_event_ms - self.dedup_ms) // HOUR_MS
        reward_cutoff = (state.max_event_ms - 2 * spec.reward.attribution_window_ms) // HOUR_MS
        for key in self._store.keys_before(entity_prefix(SERVES_CHUNK, routing), serve_cutoff):
            writes[key] = None
        for key in self._store.keys_before(entity_prefix(REWARDED, routing), reward_cutoff):
            writes[key] = None
        return writes

