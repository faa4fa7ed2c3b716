"""The stream worker's state: what it keeps, and the keys and bytes it keeps it under.

Per (experiment, entity) — its *routing key*, the Kafka key of its serves and rewards,
`experiment \\x1f entity` — the worker keeps:

- an `EntityState`: hourly per-arm counters (`sluice.core.sufficient.HourlyStatistics` of
  `ArmCounters`) and the bookkeeping of its publications. Held in memory for the
  partitions the worker owns; its size depends on arms and hours, never on traffic;
- the serve ids it has counted, for as long as a duplicate may still come (`dedup_ms`),
  and a record per *rewarded* serve (binary: rewarded once; continuous: its total so far),
  for twice the attribution window. These live on local disk (`streams.store`), never in
  memory. Nothing is kept for a serve that gets no reward: its serve id (a serve token,
  `sluice.core.serve_token`) tells a later reward its arm, time and in-experiment flag.

Every change is written to the compacted changelog topic (keys below, values ≤ the
configured message limit) in the same Kafka transaction as the input offsets it
consumed, and then to the local store; a worker that takes a partition reads the
changelog from its local checkpoint on. Keys (bytes):

    E routing                      EntityState header (JSON)
    A routing                      the bucket allocation of its latest weight table (JSON)
    H routing RS hour              ArmCounters of one hour (little-endian float64, with its shape)
    R routing RS hour unique       a rewarded serve: flags (1 byte) + total (float64)
    S routing RS hour seq          serve ids counted in one batch: 12-byte uniques, concatenated

(RS = \\x1e, hour = 4 bytes big-endian, unique = the 12 bytes of a token's hex unique,
seq = 8 bytes big-endian). An `S` chunk is exploded into one local key per serve id
(`s routing RS hour unique`) for lookups. A deleted key is a tombstone (null value).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from sluice.core.sufficient import ArmCounters, HourlyStatistics
from sluice.kafka.clients import KEY_SEPARATOR

RS = b"\x1e"
HEADER, ALLOCATION, HOUR, REWARDED, SERVES_CHUNK, SERVE_ID = b"E", b"A", b"H", b"R", b"S", b"s"
_KEY_SEP = KEY_SEPARATOR.encode()
_HOUR = struct.Struct(">I")
_SEQ = struct.Struct(">Q")
_REWARDED = struct.Struct("<Bd")
_SHAPE = struct.Struct("<HI")
UNIQUE_BYTES = 12

REWARDED_ONCE = 1  # flag: a binary reward of 1 was counted for this serve


def experiment_of(routing: bytes) -> str:
    return routing.split(_KEY_SEP, 1)[0].decode()


def entity_of(routing: bytes) -> str:
    return routing.split(_KEY_SEP, 1)[1].decode()


# -- keys -------------------------------------------------------------------------------

def header_key(routing: bytes) -> bytes:
    return HEADER + routing


def allocation_key(routing: bytes) -> bytes:
    return ALLOCATION + routing


def hour_key(routing: bytes, hour: int) -> bytes:
    return HOUR + routing + RS + _HOUR.pack(hour)


def rewarded_key(routing: bytes, hour: int, unique: bytes) -> bytes:
    return REWARDED + routing + RS + _HOUR.pack(hour) + unique


def serves_chunk_key(routing: bytes, hour: int, seq: int) -> bytes:
    return SERVES_CHUNK + routing + RS + _HOUR.pack(hour) + _SEQ.pack(seq)


def serve_id_key(routing: bytes, hour: int, unique: bytes) -> bytes:
    return SERVE_ID + routing + RS + _HOUR.pack(hour) + unique


def entity_prefix(kind: bytes, routing: bytes) -> bytes:
    """The prefix of every key of `kind` of one (experiment, entity), in hour order."""
    return kind + routing + RS


def split_key(key: bytes) -> tuple[bytes, bytes, int | None]:
    """(kind, routing, hour or None) of a key."""
    kind = key[:1]
    if kind in (HEADER, ALLOCATION):
        return kind, key[1:], None
    routing, _, rest = key[1:].partition(RS)
    return kind, routing, _HOUR.unpack_from(rest)[0]


def hour_of_key(key: bytes, prefix_len: int) -> int:
    """The hour of an H/R/S/s key whose routing prefix (kind + routing + RS) is `prefix_len` long."""
    return _HOUR.unpack_from(key, prefix_len)[0]


# -- values -----------------------------------------------------------------------------

def encode_counters(counters: ArmCounters) -> bytes:
    fields, arms = counters.values.shape
    return _SHAPE.pack(fields, arms) + counters.values.astype("<f8").tobytes()


def decode_counters(data: bytes, num_arms: int) -> ArmCounters:
    """An hour's counters, padded to `num_arms` arms and to today's fields (fields are only
    ever appended, so an hour written by an older worker reads as zeros in the new ones)."""
    fields, arms = _SHAPE.unpack_from(data)
    values = np.frombuffer(data, dtype="<f8", offset=_SHAPE.size).reshape(fields, arms)
    out = np.zeros((len(ArmCounters.FIELDS), num_arms))
    out[:min(fields, out.shape[0]), :arms] = values[:out.shape[0]]
    return ArmCounters(out)


@dataclass
class Rewarded:
    """What is kept of a serve once it has a reward: whether a binary reward was counted,
    and the sum of its continuous rewards."""

    flags: int = 0
    total: float = 0.0

    def to_bytes(self) -> bytes:
        return _REWARDED.pack(self.flags, self.total)

    @classmethod
    def from_bytes(cls, data: bytes) -> Rewarded:
        return cls(*_REWARDED.unpack(data))


def unique_bytes(unique_hex: str) -> bytes:
    return bytes.fromhex(unique_hex)


def chunk_uniques(data: bytes) -> list[bytes]:
    """The serve-id uniques of an `S` chunk."""
    return [data[i:i + UNIQUE_BYTES] for i in range(0, len(data), UNIQUE_BYTES)]


@dataclass
class EntityState:
    """Counters and bookkeeping of one (experiment, entity).

    arms: every arm ever seen, in order of first appearance (appended, never removed, so an
    arm keeps its index in every hour). hours: event-time hour → `ArmCounters`.
    """

    arms: list[str] = field(default_factory=list)
    hours: HourlyStatistics[ArmCounters] = field(default_factory=lambda: HourlyStatistics(ArmCounters.zeros(1)))
    max_event_ms: int = 0  # newest event time seen: the end of the window
    first_event_ms: int = 0  # oldest event time seen: how long the experiment has run here
    newest_input_ms: int = 0  # Kafka timestamp of the newest input applied (freshness)
    changes: int = 0  # batches that changed the counters
    published_changes: int = 0  # `changes` as of the latest publication
    serve_chunks: int = 0  # sequence number of the newest `S` chunk
    version: int = 0  # latest published weight-table version
    decision: str = ""  # verdict/rule/winner of the latest published decision
    allocation: list[list[list[int]]] | None = None  # its bucket ranges, per arm of `arms`
    num_buckets: int = 0
    # Health and decisions (see `streams.health`):
    origin_hour: int = -1  # hour the health e-detectors count their starts from (the first event's)
    recent_weights: list[list[Any]] = field(default_factory=list)  # [version, [weight per arm]] of the last tables
    srm_first_start: int = -1  # hour of srm_log_e[0]
    srm_log_e: list[float] = field(default_factory=list)  # log E of the SRM e-process started at each hour
    actions: dict[str, dict[str, Any]] = field(default_factory=dict)  # arm → rollback/kill in force, with why
    paused: dict[str, Any] | None = None  # the entity serves its default arm, and why
    shipped: dict[str, Any] | None = None  # a shipped winner, with the holdback
    alerted: dict[str, int] = field(default_factory=dict)  # "kind/arm" → when it was last alerted (once per breach)

    def arm_index(self, arm: str) -> int:
        try:
            return self.arms.index(arm)
        except ValueError:
            self.arms.append(arm)
            if len(self.arms) > self.hours.num_arms:
                self.hours = self.hours.with_arms(len(self.arms))
            return len(self.arms) - 1

    @property
    def dirty(self) -> bool:
        return self.changes != self.published_changes

    def header_bytes(self) -> bytes:
        return orjson.dumps({
            "arms": self.arms, "max_event_ms": self.max_event_ms, "first_event_ms": self.first_event_ms,
            "newest_input_ms": self.newest_input_ms, "changes": self.changes,
            "published_changes": self.published_changes, "serve_chunks": self.serve_chunks, "version": self.version,
            "decision": self.decision, "origin_hour": self.origin_hour,
            "srm_first_start": self.srm_first_start, "srm_log_e": self.srm_log_e, "actions": self.actions,
            "paused": self.paused, "shipped": self.shipped, "alerted": self.alerted,
        })

    def weights_of(self, version: int) -> list[float] | None:
        """The weights (per arm of `arms`) of a recently published table version, if kept."""
        for v, weights in reversed(self.recent_weights):
            if v == version:
                return weights + [0.0] * (len(self.arms) - len(weights))
        return None

    def allocation_bytes(self) -> bytes:
        """What changes only when a table is published: its allocation, and the weights of the
        recent versions (for the SRM test), kept apart from the header written every batch."""
        return orjson.dumps({"allocation": self.allocation, "num_buckets": self.num_buckets,
                             "recent_weights": self.recent_weights})

    @classmethod
    def from_bytes(cls, header: bytes, hours: dict[int, bytes], allocation: bytes | None = None) -> EntityState:
        """The state from its header, its hours' values and its allocation."""
        fields: dict[str, Any] = orjson.loads(header)
        if allocation is not None:
            fields.update(orjson.loads(allocation))
        state = cls(**fields)
        k = max(1, len(state.arms))
        state.hours = HourlyStatistics(ArmCounters.zeros(k), {h: decode_counters(v, k) for h, v in hours.items()})
        return state
