"""Deterministic assignment of units to arms.

The bucket hash (the contract every SDK reimplements)
-----------------------------------------------------
    key    = UTF-8 bytes of  salt + ":" + unit_id        (no Unicode normalisation)
    digest = SHA-1(key)                                 (20 bytes)
    h      = digest[0:8] read as a big-endian unsigned 64-bit integer
    bucket = h mod num_buckets                          (num_buckets default 10,000)

Two more hashes use the same function with derived salts, so they are independent of the
arm bucket and of each other:

- traffic: `traffic_bucket = bucket_of(salt + "/traffic", unit_id, num_buckets)`; the
  unit is in the experiment iff `traffic_bucket < floor(traffic_fraction * num_buckets + 0.5)`
  (the product in IEEE-754 double precision);
- layer: `layer_bucket = bucket_of("layer/" + layer_name, unit_id, layer.num_buckets)`;
  the unit may enter the experiment only if `layer.start <= layer_bucket < layer.end`.
  Experiments of one layer own disjoint slices, so they never share a unit.

Experiment salts must not contain "/" or ":" (the spec enforces it), so derived salts
never coincide with another experiment's salt and the key is unambiguous.

The arm is `allocation.arm_of(bucket)`. A unit in the experiment gets propensity = its
arm's bucket count / num_buckets (the exact probability of that arm among units in the
experiment); a unit outside it gets the default arm with propensity 1 and
`in_experiment=False`. `sluice/core/data/bucket_vectors.json` holds test vectors of all
of the above (built by `sluice.core.vectors.bucket_vectors`).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sluice.core.allocation import DEFAULT_NUM_BUCKETS, Allocation, check_num_buckets
from sluice.core.errors import CoreInputError

_sha1 = hashlib.sha1
# h of the module docstring: the first 8 digest bytes as a big-endian uint64 (a 1-tuple);
# a quarter faster than int.from_bytes(digest[:8], "big") on the assignment path.
_digest_head = struct.Struct(">Q").unpack_from


class AssignmentError(CoreInputError):
    """Inputs that cannot be assigned: a bad unit id, salt, fraction, layer or arm."""


def bucket_of(salt: str, unit_id: str, num_buckets: int = DEFAULT_NUM_BUCKETS) -> int:
    """Bucket of `unit_id` under `salt`, in [0, num_buckets): see the module docstring."""
    digest = _sha1(_key_prefix(salt) + _encode(unit_id)).digest()
    return int.from_bytes(digest[:8], "big") % check_num_buckets(num_buckets)


def buckets_of(
    salt: str, unit_ids: Iterable[str] | NDArray[Any], num_buckets: int = DEFAULT_NUM_BUCKETS
) -> NDArray[np.int64]:
    """Buckets of many unit ids at once, shape (n,); equal to `bucket_of` for each.

    unit_ids: strings (a list, or a numpy array of str/object dtype). A numpy integer
    array is hashed as the decimal text of each integer.
    """
    n = np.uint64(check_num_buckets(num_buckets))
    return (_hash64(_key_prefix(salt), _as_str_list(unit_ids)) % n).astype(np.int64)


def traffic_salt(salt: str) -> str:
    """Salt of the traffic-fraction hash, independent of the arm bucket."""
    return f"{salt}/traffic"


def layer_salt(layer_name: str) -> str:
    """Salt of a layer's hash, shared by every experiment of the layer."""
    return f"layer/{layer_name}"


def traffic_threshold(traffic_fraction: float, num_buckets: int = DEFAULT_NUM_BUCKETS) -> int:
    """Traffic buckets that enter the experiment: floor(fraction * N + 0.5), in [0, N]."""
    numeric = isinstance(traffic_fraction, (int, float)) and not isinstance(traffic_fraction, bool)
    if not (numeric and 0 < traffic_fraction <= 1):
        raise AssignmentError(f"traffic_fraction must be in (0, 1], but {traffic_fraction!r} is given")
    return math.floor(float(traffic_fraction) * check_num_buckets(num_buckets) + 0.5)


@dataclass(frozen=True)
class LayerSlice:
    """An experiment's slice `[start, end)` of a layer's bucket space.

    Experiments in the same layer (same `name`) with disjoint slices never share a unit.
    """

    name: str
    start: int
    end: int
    num_buckets: int = DEFAULT_NUM_BUCKETS

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise AssignmentError(f"layer name must be a non-empty string, but {self.name!r} is given")
        check_num_buckets(self.num_buckets)
        if not (0 <= self.start < self.end <= self.num_buckets):
            raise AssignmentError(
                f"layer {self.name!r} slice [{self.start}, {self.end}) must satisfy "
                f"0 <= start < end <= num_buckets ({self.num_buckets})"
            )

    def overlaps(self, other: LayerSlice) -> bool:
        """True when both slices are in the same layer and share a bucket."""
        return self.name == other.name and self.start < other.end and other.start < self.end


def split_layer(
    name: str, experiment_ids: Sequence[str], num_buckets: int = DEFAULT_NUM_BUCKETS
) -> dict[str, LayerSlice]:
    """Disjoint, contiguous, near-equal slices of layer `name`, one per experiment, in order."""
    if not experiment_ids or len(set(experiment_ids)) != len(experiment_ids):
        raise AssignmentError(f"experiment_ids must be non-empty and unique, but {list(experiment_ids)!r} is given")
    n = check_num_buckets(num_buckets)
    if len(experiment_ids) > n:
        raise AssignmentError(f"layer {name!r} has {n} buckets, fewer than {len(experiment_ids)} experiments")
    edges = [n * i // len(experiment_ids) for i in range(len(experiment_ids) + 1)]
    return {eid: LayerSlice(name, edges[i], edges[i + 1], n) for i, eid in enumerate(experiment_ids)}


def layer_conflicts(slices: Mapping[str, LayerSlice]) -> list[tuple[str, str]]:
    """Pairs of experiment ids (sorted) whose slices overlap in the same layer."""
    items = sorted(slices.items())
    return [(a, b) for i, (a, sa) in enumerate(items) for b, sb in items[i + 1 :] if sa.overlaps(sb)]


@dataclass(frozen=True)
class Assignment:
    """Where one unit goes. The SDK adds the serve id and the weight-table version.

    arm_index/arm: the arm served; propensity: its exact assignment probability (bucket
    share) when in the experiment, 1.0 for the default arm outside it; bucket: the unit's
    arm bucket in [0, num_buckets), computed either way so it can be logged.
    """

    arm_index: int
    arm: str
    propensity: float
    in_experiment: bool
    bucket: int


@dataclass(frozen=True, eq=False)
class BatchAssignment:
    """Assignments of n units, as arrays of shape (n,); `arms` names arm indices."""

    arm_index: NDArray[np.int32]
    propensity: NDArray[np.float64]
    in_experiment: NDArray[np.bool_]
    bucket: NDArray[np.int64]
    arms: tuple[str, ...]

    def arm_names(self) -> NDArray[np.str_]:
        """Arm name of every unit, shape (n,)."""
        return np.asarray(self.arms)[self.arm_index]


@dataclass(frozen=True)
class Assigner:
    """Assigns units to the arms of one experiment (and entity) under one allocation.

    salt: the experiment's salt; allocation: bucket ranges per arm (its num_buckets is the
    experiment's); arms: arm names in allocation order; default_arm: served outside the
    experiment; traffic_fraction in (0, 1]; layer: the experiment's layer slice, if any.
    Build one per weight table; `assign` costs one SHA-1 (two with a traffic fraction
    below 1, three with a layer) and a tuple lookup.
    """

    salt: str
    allocation: Allocation
    arms: tuple[str, ...]
    default_arm: str
    traffic_fraction: float = 1.0
    layer: LayerSlice | None = None
    _prefix: bytes = field(init=False, repr=False, compare=False)
    _traffic_prefix: bytes = field(init=False, repr=False, compare=False)
    _layer_prefix: bytes = field(init=False, repr=False, compare=False)
    _threshold: int = field(init=False, repr=False, compare=False)
    _owner: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _owner_array: NDArray[np.int32] = field(init=False, repr=False, compare=False)
    _shares: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _default_index: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arms", tuple(self.arms))
        if len(self.arms) != self.allocation.num_arms:
            raise AssignmentError(
                f"arms has {len(self.arms)} names but the allocation has {self.allocation.num_arms} arms"
            )
        if len(set(self.arms)) != len(self.arms):
            raise AssignmentError(f"arms must be unique, but {list(self.arms)!r} is given")
        if self.default_arm not in self.arms:
            raise AssignmentError(f"default_arm must be one of {list(self.arms)!r}, but {self.default_arm!r} is given")
        n = self.allocation.num_buckets
        owner = self.allocation.dense()
        owner.setflags(write=False)
        set_ = object.__setattr__
        set_(self, "_prefix", _key_prefix(self.salt))
        set_(self, "_traffic_prefix", _key_prefix(traffic_salt(self.salt)))
        set_(self, "_layer_prefix", _key_prefix(layer_salt(self.layer.name)) if self.layer else b"")
        set_(self, "_threshold", traffic_threshold(self.traffic_fraction, n))
        set_(self, "_owner", tuple(owner.tolist()))
        set_(self, "_owner_array", owner)
        set_(self, "_shares", tuple((self.allocation.counts / n).tolist()))
        set_(self, "_default_index", self.arms.index(self.default_arm))

    @property
    def num_buckets(self) -> int:
        return self.allocation.num_buckets

    def assign(self, unit_id: str) -> Assignment:
        """The arm of one unit. Raises AssignmentError if `unit_id` is not a str."""
        arm, inside, bucket = self.locate(unit_id)
        if inside:
            return Assignment(arm, self.arms[arm], self._shares[arm], True, bucket)
        return Assignment(arm, self.default_arm, 1.0, False, bucket)

    def locate(self, unit_id: str) -> tuple[int, bool, int]:
        """`assign` as a plain tuple `(arm_index, in_experiment, bucket)`: the SDK's hot path,
        which spends a third of `assign`'s time building the frozen `Assignment` otherwise.
        Outside the experiment, arm_index is the default arm's."""
        n = self.allocation.num_buckets
        try:
            key = unit_id.encode()
        except (AttributeError, UnicodeEncodeError):
            key = _encode(unit_id)  # raises a readable error
        bucket = _digest_head(_sha1(self._prefix + key).digest())[0] % n
        if self._threshold < n:
            traffic_bucket = _digest_head(_sha1(self._traffic_prefix + key).digest())[0] % n
            if traffic_bucket >= self._threshold:
                return self._default_index, False, bucket
        layer = self.layer
        if layer is not None:
            lb = _digest_head(_sha1(self._layer_prefix + key).digest())[0] % layer.num_buckets
            if not layer.start <= lb < layer.end:
                return self._default_index, False, bucket
        return self._owner[bucket], True, bucket

    def assign_batch(self, unit_ids: Iterable[str] | NDArray[Any]) -> BatchAssignment:
        """Arms of many units, equal to `assign` for each (see `buckets_of` for unit_ids)."""
        keys = _as_str_list(unit_ids)
        n = self.allocation.num_buckets
        bucket = (_hash64(self._prefix, keys) % np.uint64(n)).astype(np.int64)
        inside = np.ones(bucket.size, dtype=bool)
        if self._threshold < n:
            inside &= (_hash64(self._traffic_prefix, keys) % np.uint64(n)).astype(np.int64) < self._threshold
        if self.layer is not None:
            lb = (_hash64(self._layer_prefix, keys) % np.uint64(self.layer.num_buckets)).astype(np.int64)
            inside &= (lb >= self.layer.start) & (lb < self.layer.end)
        arm = self._owner_array[bucket]
        propensity = np.asarray(self._shares)[arm]
        arm = np.where(inside, arm, self._default_index).astype(np.int32)
        propensity = np.where(inside, propensity, 1.0)
        return BatchAssignment(arm, propensity, inside, bucket, self.arms)


def _key_prefix(salt: str) -> bytes:
    if not isinstance(salt, str):
        raise AssignmentError(f"salt must be a str, but {salt!r} is given")
    return (salt + ":").encode("utf-8")


def _encode(unit_id: object) -> bytes:
    if not isinstance(unit_id, str):
        raise AssignmentError(f"unit_id must be a str, but {unit_id!r} ({type(unit_id).__name__}) is given")
    try:
        return unit_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise AssignmentError(
            f"unit_id must be valid Unicode text (encodable as UTF-8), but {unit_id!r} is given"
        ) from exc


def _as_str_list(unit_ids: Iterable[str] | NDArray[Any]) -> list[str]:
    if isinstance(unit_ids, (str, bytes)):
        raise AssignmentError(f"unit_ids must be a collection of str, but a single {type(unit_ids).__name__} is given")
    if isinstance(unit_ids, np.ndarray):
        if unit_ids.ndim != 1:
            raise AssignmentError(f"unit_ids must be 1-D, but shape {unit_ids.shape} is given")
        if unit_ids.dtype.kind in "iu":
            return list(map(str, unit_ids.tolist()))
        return unit_ids.tolist()
    return unit_ids if isinstance(unit_ids, list) else list(unit_ids)


# Reads the first 8 of each 20-byte SHA-1 digest as a big-endian uint64, skipping the rest.
_DIGEST_HEAD = np.dtype([("head", ">u8"), ("tail", "V12")])


def _hash64(prefix: bytes, unit_ids: list[str]) -> NDArray[np.uint64]:
    """First 8 digest bytes of SHA-1(prefix + UTF-8(unit_id)) per unit, as uint64, shape (n,)."""
    # hashlib works one message at a time and numpy cannot do SHA-1, so the loop is the
    # floor; a plain list comprehension is the fastest loop in CPython 3.11 (faster than
    # map chains), and joining the digests lets numpy decode all of them in one call.
    try:
        joined = b"".join([_sha1(prefix + u.encode()).digest() for u in unit_ids])
    except (AttributeError, UnicodeEncodeError):
        for u in unit_ids:
            _encode(u)  # raises naming the first bad unit id
        raise
    return np.frombuffer(joined, dtype=_DIGEST_HEAD)["head"].astype(np.uint64)
