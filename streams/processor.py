"""One batch of serves and rewards → attribution and windowed statistics, idempotently.

This is the worker's hot path, written without Faust so that it can be read and tested on
its own: `Processor.process(events)` takes the raw messages of a batch (both topics mixed),
decodes and validates each, sends the bad ones back as dead letters with a reason, and
applies the good ones to the state in `store` (any mutable mapping of bytes to bytes; the
worker passes its Faust table). Each state key is written at most once per batch.

Rules (see README, "Attribution"):

* A serve adds to its arm's `serves` in the hour of its event time; an in-experiment serve
  is also an observation (`count`), with reward 0 until a reward is attributed to it.
* A reward counts when its name is the experiment's reward, its serve is known, and it
  comes at most the attribution window after the serve (event time). A binary reward adds
  1 to `sum` the first time a serve gets value 1; a continuous one adds its value to the
  serve's total (and `sum_sq` moves from total² to (total + value)²). The statistics change
  in the hour of the *serve*, so a window holds whole serves.
* A reward that arrives before its serve (serves and rewards are separate topics, read
  independently) waits in the serve's record and is attributed when the serve comes; if
  none comes within `orphan_grace_ms` of event time it is counted as `unknown_serve`.
* Hours that end before the window (max event time of the key − window) are dropped;
  events in them are counted `too_late` and change nothing.

Idempotence: an entity's state stores the last serve and reward offsets its statistics
include, and a serve record the offsets it includes. A replayed event (after a crash,
between a state write and the offset commit) is skipped wherever it was already applied.
All entity states of a batch are written before its serve records, and both go to one
changelog partition in order, so a record never includes an event the statistics lack.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from sluice.avro import (
    CorruptBodyError,
    NotSingleObjectError,
    TruncatedMessageError,
    UnexpectedSchemaError,
    UnknownFingerprintError,
)
from sluice.core.spec import ExperimentSpec
from sluice.core.sufficient import HOUR_MS, window_hours
from sluice.kafka.clients import KEY_SEPARATOR, entity_key
from streams.state import (
    COUNT,
    FIELDS,
    IN_EXPERIMENT,
    REWARDED,
    SERVES,
    SUM,
    SUM_SQ,
    EntityState,
    ServeRecord,
    entity_state_key,
    serve_record_key,
)

SERVES_TOPIC, REWARDS_TOPIC = "serves", "rewards"
_EXPECTED = {SERVES_TOPIC: "ServeEvent", REWARDS_TOPIC: "RewardEvent"}
_FORBIDDEN_IN_ENTITY = (KEY_SEPARATOR, "\x1e")


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
    applied: Counter[str] = field(default_factory=Counter)  # by input kind: events newly applied
    outcomes: Counter[str] = field(default_factory=Counter)  # attribution and serve outcomes
    changed: set[bytes] = field(default_factory=set)  # routing keys whose statistics changed


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class Processor:
    """See the module docstring. `specs(experiment_id)` gives the live spec or None;
    `now_ms()` is the wall clock, used only to refuse timestamps too far in the future."""

    def __init__(
        self,
        serde: Any,
        specs: Callable[[str], ExperimentSpec | None],
        store: MutableMapping[bytes, bytes],
        *,
        now_ms: Callable[[], int],
        max_future_ms: int = 3_600_000,
        orphan_grace_ms: int = 3_600_000,
    ) -> None:
        self._serde = serde
        self._specs = specs
        self._store = store
        self._now_ms = now_ms
        self.max_future_ms = max_future_ms
        self.orphan_grace_ms = orphan_grace_ms

    # -- decoding and validation -------------------------------------------------------

    def _validate(self, event: InputEvent, now_ms: int) -> tuple[dict[str, Any], ExperimentSpec]:
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
        spec = self._specs(exp_id)
        if spec is None:
            raise _Rejected("unknown_experiment", f"experiment {exp_id!r} has no spec on the experiments topic")
        if not record["serve_id"]:
            raise _Rejected("invalid_value", "serve_id is empty")
        if record["timestamp"] > now_ms + self.max_future_ms:
            raise _Rejected("future_timestamp", f"timestamp {record['timestamp']} is more than "
                            f"{self.max_future_ms} ms ahead of the clock ({now_ms})")
        if event.kind == SERVES_TOPIC:
            if record["arm"] not in spec.arm_names:
                raise _Rejected("unknown_arm", f"arm {record['arm']!r} is not in experiment {exp_id!r} "
                                f"(arms {list(spec.arm_names)})")
            p = record["propensity"]
            if not (0.0 < p <= 1.0):  # also false for NaN
                raise _Rejected("invalid_propensity", f"propensity {p!r} is outside (0, 1]")
        else:
            v = record["value"]
            if not math.isfinite(v):
                raise _Rejected("invalid_value", f"reward value {v!r} is not finite")
            if spec.reward.type == "binary" and record["name"] == spec.reward.name and v not in (0.0, 1.0):
                raise _Rejected("invalid_value", f"binary reward {record['name']!r} has value {v!r}; expected 0 or 1")
        return record, spec

    # -- the batch ------------------------------------------------------------------------

    def process(self, events: list[InputEvent]) -> BatchResult:
        result = BatchResult()
        now = self._now_ms()
        by_key: dict[bytes, list[tuple[InputEvent, dict[str, Any], ExperimentSpec]]] = {}
        for event in events:
            try:
                record, spec = self._validate(event, now)
            except _Rejected as rej:
                result.dead_letters.append(DeadLetter(event, rej.reason, rej.detail))
                continue
            by_key.setdefault(event.key, []).append((event, record, spec))  # type: ignore[arg-type]

        states: dict[bytes, EntityState] = {}
        records: dict[bytes, ServeRecord] = {}
        for routing, items in by_key.items():
            state = self._load_state(routing, items[0][2])
            before = state.changes
            # Serves first: a reward in the same batch then finds its serve.
            items.sort(key=lambda it: (it[0].kind != SERVES_TOPIC, it[0].offset))
            for event, record, spec in items:
                if event.kind == SERVES_TOPIC:
                    self._serve(routing, state, records, event, record, spec, result)
                else:
                    self._reward(routing, state, records, event, record, spec, result)
                state.newest_input_ms = max(state.newest_input_ms, event.timestamp_ms)
            self._expire_hours(state, items[0][2])
            if state.changes != before:
                result.changed.add(routing)
            states[routing] = state

        for routing, state in states.items():  # entity states first (see module docstring)
            self._store[entity_state_key(routing)] = state.to_bytes()
        for key, rec in records.items():
            self._store[key] = rec.to_bytes()
        return result

    def _load_state(self, routing: bytes, spec: ExperimentSpec) -> EntityState:
        raw = self._store.get(entity_state_key(routing))
        return EntityState(arms=list(spec.arm_names)) if raw is None else EntityState.from_bytes(raw)

    def _record(self, records: dict[bytes, ServeRecord], key: bytes) -> ServeRecord | None:
        rec = records.get(key)
        if rec is None:
            raw = self._store.get(key)
            if raw is not None:
                rec = records[key] = ServeRecord.from_bytes(raw)
        return rec

    def _serve(self, routing: bytes, state: EntityState, records: dict[bytes, ServeRecord], event: InputEvent,
               record: dict[str, Any], spec: ExperimentSpec, result: BatchResult) -> None:
        key = serve_record_key(routing, record["serve_id"])
        rec = self._record(records, key)
        counted = event.offset <= state.serve_offset  # the statistics include this event already
        state.serve_offset = max(state.serve_offset, event.offset)
        if rec is not None and rec.has_serve:
            if rec.serve_offset != event.offset:
                result.outcomes["duplicate_serve"] += 1
            return
        rec = records[key] = rec or ServeRecord()
        rec.serve_ms, rec.arm, rec.serve_offset = record["timestamp"], state.arm_index(record["arm"]), event.offset
        rec.flags = IN_EXPERIMENT if record["in_experiment"] else 0
        state.max_event_ms = max(state.max_event_ms, rec.serve_ms)
        pending, rec.pending = rec.pending, []
        if counted:
            # Statistics hold this serve and its waiting rewards; bring the record level.
            for value, reward_ms, _ in pending:
                self._attribute(state, rec, spec, value, reward_ms, apply=False)
            return
        result.applied[SERVES_TOPIC] += 1
        if not self._in_window(state, spec, rec.serve_ms):
            result.outcomes["too_late"] += 1
            return
        row = state.row(rec.serve_ms // HOUR_MS)
        base = rec.arm * FIELDS
        row[base + SERVES] += 1
        if rec.in_experiment:
            row[base + COUNT] += 1
        state.changes += 1
        for value, reward_ms, _ in pending:
            result.outcomes[self._attribute(state, rec, spec, value, reward_ms, apply=True)] += 1

    def _reward(self, routing: bytes, state: EntityState, records: dict[bytes, ServeRecord], event: InputEvent,
                record: dict[str, Any], spec: ExperimentSpec, result: BatchResult) -> None:
        if record["name"] != spec.reward.name:
            result.outcomes["other_reward"] += 1
            return
        key = serve_record_key(routing, record["serve_id"])
        rec = self._record(records, key)
        counted = event.offset <= state.reward_offset
        state.reward_offset = max(state.reward_offset, event.offset)
        state.max_event_ms = max(state.max_event_ms, record["timestamp"])
        if rec is not None and event.offset <= rec.reward_offset:
            return  # replayed: the record has it, and so do the statistics
        if not counted:
            result.applied[REWARDS_TOPIC] += 1
        if rec is None or not rec.has_serve:
            # The serve has not been seen (yet): keep the reward with the serve id.
            rec = records[key] = rec or ServeRecord()
            rec.pending.append((record["value"], record["timestamp"], event.offset))
            rec.reward_offset = event.offset
            if not counted:
                result.outcomes["waiting_for_serve"] += 1
            return
        rec.reward_offset = event.offset
        outcome = self._attribute(state, rec, spec, record["value"], record["timestamp"], apply=not counted)
        if not counted:
            result.outcomes[outcome] += 1

    def _attribute(self, state: EntityState, rec: ServeRecord, spec: ExperimentSpec, value: float,
                   reward_ms: int, *, apply: bool) -> str:
        """Attribute a reward to a known serve: update the record, and the statistics when
        `apply`. Returns the outcome."""
        if reward_ms - rec.serve_ms > spec.reward.attribution_window_ms:
            return "after_window"
        if not rec.in_experiment:
            return "outside_experiment"
        old = rec.total
        if spec.reward.type == "binary":
            if value != 1.0:
                return "attributed"  # an observed 0: the serve already counts as one
            if rec.rewarded:
                return "duplicate"
            rec.flags |= REWARDED
            rec.total = 1.0
        else:
            rec.total = old + value
            rec.flags |= REWARDED
        if apply and self._in_window(state, spec, rec.serve_ms):
            row = state.row(rec.serve_ms // HOUR_MS)
            base = rec.arm * FIELDS
            row[base + SUM] += rec.total - old
            row[base + SUM_SQ] += rec.total * rec.total - old * old
            state.changes += 1
        return "attributed"

    @staticmethod
    def _in_window(state: EntityState, spec: ExperimentSpec, time_ms: int) -> bool:
        first, _ = window_hours(state.max_event_ms, spec.window_ms)
        return time_ms // HOUR_MS >= first

    @staticmethod
    def _expire_hours(state: EntityState, spec: ExperimentSpec) -> None:
        first, _ = window_hours(state.max_event_ms, spec.window_ms)
        for hour in [h for h in state.hours if h < first]:
            del state.hours[hour]
