"""The stream worker's state: what one table holds per (experiment, entity) and per serve.

Everything lives in ONE Faust table (one changelog topic) so that, within a changelog
partition, writes land in the order they were made. Keys start with the routing key of
their (experiment, entity) — the Kafka key of its serves and rewards, `exp \\x1f entity` —
then a record separator and a kind:

    routing + b"\\x1eE"               → EntityState: hourly per-arm statistics, input offsets
    routing + b"\\x1es" + serve_id    → ServeRecord: a serve's arm and time, its attributed
                                        reward, or rewards waiting for a serve not yet seen

`partition_of` places every key in the partition of its routing key, which is the
partition its events came from, so a worker that owns an input partition owns the state
of it, and recovery after a restart or a rebalance brings it to the same place.

Idempotence under at-least-once delivery (see `streams.processor`): an EntityState records
the last serve and reward offsets whose statistics it includes; a ServeRecord records the
offsets it includes. Per batch the processor writes all EntityStates first, then the
ServeRecords, so a record can include an event only if the statistics do.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import orjson
from aiokafka.partitioner import murmur2

from sluice.kafka.clients import KEY_SEPARATOR

KIND_SEPARATOR = b"\x1e"
ENTITY = b"E"
SERVE = b"s"
_KEY_SEP = KEY_SEPARATOR.encode()

# Per arm and hour: serves, observations (in-experiment serves), sum, sum of squares.
SERVES, COUNT, SUM, SUM_SQ = range(4)
FIELDS = 4


def entity_state_key(routing: bytes) -> bytes:
    return routing + KIND_SEPARATOR + ENTITY


def serve_record_key(routing: bytes, serve_id: str) -> bytes:
    return routing + KIND_SEPARATOR + SERVE + serve_id.encode()


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
    serve_offset: int = -1  # statistics include serves up to this input offset
    reward_offset: int = -1  # ... and rewards up to this one
    newest_input_ms: int = 0  # Kafka timestamp of the newest input applied (freshness)
    changes: int = 0  # batches that changed the statistics
    published_changes: int = 0  # `changes` as of the latest publication
    version: int = 0  # latest published weight-table version
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
            "max_event_ms": self.max_event_ms, "serve_offset": self.serve_offset,
            "reward_offset": self.reward_offset, "newest_input_ms": self.newest_input_ms,
            "changes": self.changes, "published_changes": self.published_changes, "version": self.version,
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
