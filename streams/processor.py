"""One batch of serves and rewards → attribution and windowed statistics, idempotently.

This is the worker's hot path, written without Faust so that it can be read and tested on
its own: `Processor.process(events)` takes the raw messages of a batch (both topics mixed),
decodes and validates each, sends the bad ones back as dead letters with a reason, and
applies the good ones to the state of their (experiment, entity), which it persists in
`store` (any mutable mapping of bytes to bytes; the worker passes its Faust table) as ONE
write per (experiment, entity) per batch.

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

Idempotence: each write is a delta (see `streams.state`) holding the entity's whole state
— statistics and the last serve and reward offsets they include — and the serve records
the batch changed, so a batch's effect on an entity lands entirely or not at all. After a
crash, `rebuild` folds the deltas back into memory and a replayed event at or below the
offsets is skipped; `compact` expires old records and replaces an entity's deltas by one
snapshot.
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
    DELTA,
    Delta,
    EntityState,
    ServeRecord,
    delta_key,
    delta_seq,
    split_key,
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
        self._arm_sets: dict[tuple[str, int], frozenset[str]] = {}
        self.states: dict[bytes, EntityState] = {}  # routing → state of its (experiment, entity)
        self.records: dict[bytes, dict[str, ServeRecord]] = {}  # routing → serve id → record
        self.deltas: dict[bytes, list[int]] = {}  # routing → sequence numbers of its deltas in the store
        self.rebuild()

    # -- state: memory and deltas ---------------------------------------------------------

    def rebuild(self, owned: Callable[[bytes], bool] = lambda routing: True) -> None:
        """Fold the deltas in the store into memory, for the routing keys `owned` says this
        worker owns (after a start or a rebalance)."""
        found: dict[bytes, list[tuple[int, bytes]]] = {}
        for key in list(self._store.keys()):
            routing, kind = split_key(key)
            if kind == DELTA and owned(routing):
                found.setdefault(routing, []).append((delta_seq(key), key))
        self.states, self.records, self.deltas = {}, {}, {}
        for routing, keys in found.items():
            keys.sort()
            records: dict[str, ServeRecord] = {}
            for _, key in keys:
                delta = Delta.from_bytes(self._store[key])
                if delta.snapshot:
                    records = {}
                records.update(delta.records)
                self.states[routing] = delta.state
            self.records[routing] = records
            self.deltas[routing] = [seq for seq, _ in keys]

    def save(self, routing: bytes, changed: dict[str, ServeRecord] | None = None, *, snapshot: bool = False) -> None:
        """Persist the state of `routing` with the records that changed (all of them, as a
        snapshot that replaces the earlier deltas, when `snapshot`)."""
        state = self.states[routing]
        state.delta_seq += 1
        records = self.records[routing] if snapshot else (changed or {})
        self._store[delta_key(routing, state.delta_seq)] = Delta(state, records, snapshot).to_bytes()
        if snapshot:
            for seq in self.deltas.get(routing, []):
                del self._store[delta_key(routing, seq)]
            self.deltas[routing] = []
        self.deltas.setdefault(routing, []).append(state.delta_seq)

    def compact(self, routing: bytes, keep_serves_ms: int, min_deltas: int = 32) -> tuple[int, int]:
        """Drop the records of `routing` that can no longer matter — serves older than
        `keep_serves_ms` before the key's newest event time, rewards that waited longer than
        the orphan grace for their serve — and, when any went or the entity has
        `min_deltas` deltas, write one snapshot and delete the older deltas. Returns
        (serve records dropped, waiting rewards dropped)."""
        records, state = self.records.get(routing), self.states.get(routing)
        if records is None or state is None:
            return 0, 0
        serves = orphans = 0
        for serve_id, rec in list(records.items()):
            if rec.has_serve:
                old = rec.serve_ms + keep_serves_ms < state.max_event_ms
                serves += old
            else:
                old = max(t for _, t, _ in rec.pending) + self.orphan_grace_ms < state.max_event_ms
                orphans += len(rec.pending) if old else 0
            if old:
                del records[serve_id]
        if serves or orphans or len(self.deltas.get(routing, [])) >= min_deltas:
            self.save(routing, snapshot=True)
        return serves, orphans

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
            if record["arm"] not in self._arm_set(spec):
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

    def _arm_set(self, spec: ExperimentSpec) -> frozenset[str]:
        """The arm names of `spec`, computed once per spec version (a hot-path lookup)."""
        key = (spec.id, spec.spec_version)
        arms = self._arm_sets.get(key)
        if arms is None:
            arms = self._arm_sets[key] = frozenset(spec.arm_names)
        return arms

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

        deltas: dict[bytes, dict[str, ServeRecord]] = {}
        for routing, items in by_key.items():
            state = self.states.get(routing)
            if state is None:
                state = self.states[routing] = EntityState(arms=list(items[0][2].arm_names))
            records = self.records.setdefault(routing, {})
            changed: dict[str, ServeRecord] = {}
            before = (state.changes, state.serve_offset, state.reward_offset)
            # Serves first: a reward in the same batch then finds its serve.
            items.sort(key=lambda it: (it[0].kind != SERVES_TOPIC, it[0].offset))
            for event, record, spec in items:
                if event.kind == SERVES_TOPIC:
                    self._serve(state, records, changed, event, record, spec, result)
                else:
                    self._reward(state, records, changed, event, record, spec, result)
                state.newest_input_ms = max(state.newest_input_ms, event.timestamp_ms)
            self._expire_hours(state, items[0][2])
            if state.changes != before[0]:
                result.changed.add(routing)
            if (state.changes, state.serve_offset, state.reward_offset) != before:
                deltas[routing] = changed  # replayed events alone change nothing: no write
        for routing, changed in deltas.items():
            self.save(routing, changed)
        return result

    def _serve(self, state: EntityState, records: dict[str, ServeRecord], changed: dict[str, ServeRecord],
               event: InputEvent, record: dict[str, Any], spec: ExperimentSpec, result: BatchResult) -> None:
        if event.offset <= state.serve_offset:
            return  # replayed after a crash: the state has it
        state.serve_offset = event.offset
        key = record["serve_id"]
        rec = records.get(key)
        if rec is not None and rec.has_serve:
            result.outcomes["duplicate_serve"] += 1
            return
        rec = records[key] = changed[key] = rec or ServeRecord()
        rec.serve_ms, rec.arm, rec.serve_offset = record["timestamp"], state.arm_index(record["arm"]), event.offset
        rec.flags = IN_EXPERIMENT if record["in_experiment"] else 0
        state.max_event_ms = max(state.max_event_ms, rec.serve_ms)
        state.first_event_ms = min(state.first_event_ms or rec.serve_ms, rec.serve_ms)
        pending, rec.pending = rec.pending, []
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
            result.outcomes[self._attribute(state, rec, spec, value, reward_ms)] += 1

    def _reward(self, state: EntityState, records: dict[str, ServeRecord], changed: dict[str, ServeRecord],
                event: InputEvent, record: dict[str, Any], spec: ExperimentSpec, result: BatchResult) -> None:
        if record["name"] != spec.reward.name:
            result.outcomes["other_reward"] += 1
            return
        if event.offset <= state.reward_offset:
            return  # replayed after a crash: the state has it
        state.reward_offset = event.offset
        state.max_event_ms = max(state.max_event_ms, record["timestamp"])
        result.applied[REWARDS_TOPIC] += 1
        key = record["serve_id"]
        rec = records.get(key)
        if rec is None or not rec.has_serve:
            # The serve has not been seen (yet): keep the reward with the serve id.
            rec = records[key] = changed[key] = rec or ServeRecord()
            rec.pending.append((record["value"], record["timestamp"], event.offset))
            rec.reward_offset = event.offset
            result.outcomes["waiting_for_serve"] += 1
            return
        rec.reward_offset = event.offset
        changed[key] = rec
        result.outcomes[self._attribute(state, rec, spec, record["value"], record["timestamp"])] += 1

    def _attribute(self, state: EntityState, rec: ServeRecord, spec: ExperimentSpec, value: float,
                   reward_ms: int) -> str:
        """Attribute a reward to a known serve: update the record and the statistics.
        Returns the outcome."""
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
        if self._in_window(state, spec, rec.serve_ms):
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
