"""The stream worker's state, and how it is kept in one Faust table.

Per (experiment, entity) the worker holds an `EntityState` (hourly per-arm statistics, the
input offsets they include, the publication bookkeeping) and its serve records (a serve's
arm and time and attributed reward, or rewards waiting for a serve not yet seen). Both
live in memory; the table holds them as *deltas*, keyed by the routing key of the
(experiment, entity) — the Kafka key of its serves and rewards, `exp \\x1f entity` — a
record separator, the kind `D` and a sequence number:

    routing + b"\\x1eD" + seq (8 bytes, big-endian) → Delta(state, changed records, snapshot?)

One delta per (experiment, entity) per batch, not one changelog message per serve: Faust's
cost per produced message is what limits throughput. A delta carries the whole state, so
a batch's effect on an entity lands entirely or not at all; folding the deltas in
sequence order gives state and records back after a restart or a rebalance. A snapshot
delta carries every live record and replaces the older deltas, which are then deleted.

`partition_of` places every key in the partition of its routing key, which is the
partition its events came from, so a worker that owns an input partition owns its state,
and recovery brings the state to the same place.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import orjson
from aiokafka.partitioner import murmur2

from sluice.kafka.clients import KEY_SEPARATOR

KIND_SEPARATOR = b"\x1e"
DELTA = b"D"
_KEY_SEP = KEY_SEPARATOR.encode()

# Per arm and hour: serves, observations (in-experiment serves), sum, sum of squares.
SERVES, COUNT, SUM, SUM_SQ = range(4)
FIELDS = 4


def delta_key(routing: bytes, seq: int) -> bytes:
    return routing + KIND_SEPARATOR + DELTA + seq.to_bytes(8, "big")


def delta_seq(key: bytes) -> int:
    return int.from_bytes(key[-8:], "big")


def split_key(key: bytes) -> tuple[bytes, bytes]:
    """(routing key, kind) of a table key."""
    routing, _, rest = key.partition(KIND_SEPARATOR)
    return routing, rest[:1]


def experiment_of(routing: bytes) -> str:
    return routing.split(_KEY_SEP, 1)[0].decode()


def entity_of(routing: bytes) -> str:
    return routing.split(_KEY_SEP, 1)[1].decode()


def partition_of(key: bytes, num_partitions: int) -> int:
    """Partition of a table key: that of its routing key under Kafka's default (murmur2)
    partitioner, as the Java client, aiokafka and our confluent producers compute it."""
    routing = key.partition(KIND_SEPARATOR)[0]
    return (murmur2(routing) & 0x7FFFFFFF) % num_partitions


@dataclass
class EntityState:
    """Statistics and bookkeeping of one (experiment, entity).

    arms: every arm ever seen, in order of first appearance (arms are appended, never
    removed, so indices stay valid for the serve records). hours: event-time hour →
    flat list `[arm0 serves, arm0 count, arm0 sum, arm0 sum_sq, arm1 serves, ...]`.
    """

    arms: list[str] = field(default_factory=list)
    hours: dict[int, list[float]] = field(default_factory=dict)
    max_event_ms: int = 0
    first_event_ms: int = 0  # the oldest event time seen: how long the experiment has run here
    serve_offset: int = -1  # statistics include serves up to this input offset
    reward_offset: int = -1  # ... and rewards up to this one
    newest_input_ms: int = 0  # Kafka timestamp of the newest input applied (freshness)
    changes: int = 0  # batches that changed the statistics
    published_changes: int = 0  # `changes` as of the latest publication
    delta_seq: int = 0  # sequence number of the newest delta of serve records
    version: int = 0  # latest published weight-table version
    decision: str = ""  # verdict/rule/winner of the latest published decision
    allocation: list[list[list[int]]] | None = None  # its bucket ranges, per arm of `arms`
    num_buckets: int = 0

    def arm_index(self, arm: str) -> int:
        try:
            return self.arms.index(arm)
        except ValueError:
            self.arms.append(arm)
            for row in self.hours.values():
                row.extend((0.0,) * FIELDS)
            return len(self.arms) - 1

    def row(self, hour: int) -> list[float]:
        row = self.hours.get(hour)
        if row is None:
            row = self.hours[hour] = [0.0] * (FIELDS * len(self.arms))
        return row

    @property
    def dirty(self) -> bool:
        return self.changes != self.published_changes

    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "arms": self.arms, "hours": {str(h): r for h, r in self.hours.items()},
            "max_event_ms": self.max_event_ms, "first_event_ms": self.first_event_ms, "serve_offset": self.serve_offset,
            "reward_offset": self.reward_offset, "newest_input_ms": self.newest_input_ms,
            "changes": self.changes, "published_changes": self.published_changes, "delta_seq": self.delta_seq,
            "version": self.version, "decision": self.decision,
            "allocation": self.allocation, "num_buckets": self.num_buckets,
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> EntityState:
        d = orjson.loads(data)
        d["hours"] = {int(h): r for h, r in d["hours"].items()}
        return cls(**d)


# A serve record: serve time, arm index (-1 while only rewards are known), flags, reward
# total, the offsets of the serve and of the newest reward it includes, then the rewards
# that arrived before their serve (value, time, offset), if any.
_RECORD = struct.Struct("<qhBdqq")
_PENDING = struct.Struct("<dqq")
IN_EXPERIMENT, REWARDED = 1, 2


@dataclass
class ServeRecord:
    serve_ms: int = 0
    arm: int = -1
    flags: int = 0
    total: float = 0.0
    serve_offset: int = -1
    reward_offset: int = -1
    pending: list[tuple[float, int, int]] = field(default_factory=list)  # (value, time ms, offset)

    @property
    def has_serve(self) -> bool:
        return self.arm >= 0

    @property
    def in_experiment(self) -> bool:
        return bool(self.flags & IN_EXPERIMENT)

    @property
    def rewarded(self) -> bool:
        return bool(self.flags & REWARDED)

    def to_bytes(self) -> bytes:
        head = _RECORD.pack(self.serve_ms, self.arm, self.flags, self.total, self.serve_offset, self.reward_offset)
        return head + b"".join(_PENDING.pack(*p) for p in self.pending)

    @classmethod
    def from_bytes(cls, data: bytes) -> ServeRecord:
        serve_ms, arm, flags, total, serve_offset, reward_offset = _RECORD.unpack_from(data)
        pending = [_PENDING.unpack_from(data, off) for off in range(_RECORD.size, len(data), _PENDING.size)]
        return cls(serve_ms, arm, flags, total, serve_offset, reward_offset, pending)


_LENGTHS = struct.Struct("<HH")
_HEAD = struct.Struct("<BI")


@dataclass
class Delta:
    """One write of an (experiment, entity): its whole state and the serve records that
    changed (all of them when `snapshot`: then earlier deltas no longer count)."""

    state: EntityState
    records: dict[str, ServeRecord]
    snapshot: bool = False

    def to_bytes(self) -> bytes:
        state = self.state.to_bytes()
        parts = [_HEAD.pack(int(self.snapshot), len(state)), state]
        for serve_id, rec in self.records.items():
            sid, body = serve_id.encode(), rec.to_bytes()
            parts.append(_LENGTHS.pack(len(sid), len(body)) + sid + body)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> Delta:
        snapshot, n_state = _HEAD.unpack_from(data)
        pos = _HEAD.size + n_state
        state = EntityState.from_bytes(data[_HEAD.size:pos])
        records = {}
        while pos < len(data):
            n_sid, n_body = _LENGTHS.unpack_from(data, pos)
            pos += _LENGTHS.size
            sid = data[pos:pos + n_sid].decode()
            pos += n_sid
            records[sid] = ServeRecord.from_bytes(data[pos:pos + n_body])
            pos += n_body
        return cls(state, records, bool(snapshot))
