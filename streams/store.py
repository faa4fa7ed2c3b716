"""The worker's state on local disk: RocksDB (rocksdict), holding what the changelog holds.

Every record the worker commits to its changelog topic is applied here afterwards, with
the changelog offset it reached per partition (the *checkpoint*) in the same atomic write.
A worker that (re)gains a partition reads the changelog from its checkpoint on, so
recovery costs the local data plus the changelog written since, never a replay of the
input. The write-ahead log is off: a crash loses at most the newest writes together with
their checkpoint, and the changelog brings them back.

Besides the changelog's keys (see `streams.state`), the store keeps one key per counted
serve id (`s ...`, exploded from the `S` chunks) so that a duplicate is found with one
lookup; an `S` chunk itself is stored with an empty value (the store only needs to know
it exists, to delete it with its hour). Memory is bounded by the options (block cache,
write buffers), plus the tables' bloom filters and indexes (about 1.3 bytes a stored key).
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteOptions

from sluice.errors import SluiceError
from streams.state import (
    HEADER,
    HOUR,
    RS,
    SERVE_ID,
    SERVES_CHUNK,
    EntityState,
    allocation_key,
    chunk_uniques,
    entity_prefix,
    hour_of_key,
    serve_id_key,
)

_CHECKPOINT = b"\x00checkpoint\x00"


class StoreError(SluiceError):
    """The local state store cannot be opened or written."""
_OFFSET = struct.Struct(">q")


class LocalStore:
    """See the module docstring. Not thread-safe: the worker's loop is its only user."""

    def __init__(self, path: Path, *, cache_bytes: int = 16 << 20, write_buffer_bytes: int = 8 << 20) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(write_buffer_bytes)
        options.set_max_write_buffer_number(2)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(cache_bytes))
        # Most lookups (is this serve id new?) miss: a bloom filter (10 bits, 1.25 bytes a key,
        # kept in memory with the table indexes) answers them without reading table files.
        # Forcing filters and indexes into the small block cache instead made lookups 25x slower.
        table.set_bloom_filter(10, False)
        options.set_block_based_table_factory(table)
        try:
            self._db = Rdict(str(path), options)
        except Exception as exc:  # rocksdict raises a bare Exception ("IO error: ... LOCK")
            raise StoreError(f"cannot open the state store {path}: {exc}. Another worker may be using it: "
                             f"give each running worker its own --data-dir (or --instance-id)") from exc
        self._closed = False
        self._write = WriteOptions()
        self._write.disable_wal = True

    def close(self) -> None:
        """Flush the memtables (the write-ahead log is off) and close."""
        if not self._closed:
            self._closed = True
            self._db.flush()
            self._db.close()

    @classmethod
    def destroy(cls, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    # -- reads ----------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def keys_before(self, prefix: bytes, hour: int) -> list[bytes]:
        """Keys starting with `prefix` (kind + routing key + RS) whose hour is < `hour`."""
        out = []
        for key in self._keys(prefix):
            if hour_of_key(key, len(prefix)) >= hour:
                break
            out.append(key)
        return out

    def count(self, prefix: bytes) -> int:
        return sum(1 for _ in self._keys(prefix))

    def _keys(self, prefix: bytes) -> Iterator[bytes]:
        it = self._db.iter()
        it.seek(prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                return
            yield key
            it.next()

    def entities(self, owned: Callable[[bytes], bool]) -> dict[bytes, EntityState]:
        """The state of every stored (experiment, entity) whose routing key `owned` accepts."""
        states = {}
        for key in list(self._keys(HEADER)):
            routing = key[1:]
            if not owned(routing):
                continue
            prefix = entity_prefix(HOUR, routing)
            hours = {hour_of_key(k, len(prefix)): self._db[k] for k in self._keys(prefix)}
            states[routing] = EntityState.from_bytes(self._db[key], hours, self._db.get(allocation_key(routing)))
        return states

    def routings(self) -> list[bytes]:
        """Routing keys of every (experiment, entity) with a stored state."""
        return [key[1:] for key in self._keys(HEADER)]

    def checkpoint(self, partition: int) -> int:
        """The changelog offset of `partition` applied here (-1: none)."""
        data = self._db.get(_CHECKPOINT + str(partition).encode())
        return -1 if data is None else _OFFSET.unpack(data)[0]

    # -- writes ---------------------------------------------------------------------------

    def apply(self, records: Iterable[tuple[bytes, bytes | None]], checkpoints: dict[int, int]) -> None:
        """Apply changelog records (key, value or None for a delete) and move the given
        partitions' checkpoints, in one atomic write."""
        batch = WriteBatch(raw_mode=True)
        for key, value in records:
            kind = key[:1]
            if kind == SERVES_CHUNK:
                self._chunk(batch, key, value)
            elif value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        for partition, offset in checkpoints.items():
            batch.put(_CHECKPOINT + str(partition).encode(), _OFFSET.pack(offset))
        self._db.write(batch, self._write)

    @staticmethod
    def _chunk(batch: WriteBatch, key: bytes, value: bytes | None) -> None:
        routing, _, rest = key[1:].partition(RS)
        hour = hour_of_key(rest, 0)
        if value is None:  # the whole hour's serve ids expire together
            batch.delete(key)
            batch.delete_range(serve_id_key(routing, hour, b""), serve_id_key(routing, hour + 1, b""))
            return
        batch.put(key, b"")
        for unique in chunk_uniques(value):
            batch.put(serve_id_key(routing, hour, unique), b"")

    def forget(self, routings: Iterable[bytes], partitions: Iterable[int]) -> None:
        """Delete everything stored of `routings` and the checkpoints of `partitions` (their
        changelog is read again from the start)."""
        batch = WriteBatch(raw_mode=True)
        for routing in routings:
            batch.delete(HEADER + routing)
            batch.delete(allocation_key(routing))
            for kind in (HOUR, b"R", SERVES_CHUNK, SERVE_ID):
                prefix = entity_prefix(kind, routing)
                batch.delete_range(prefix, prefix[:-1] + b"\x1f")
        for partition in partitions:
            batch.delete(_CHECKPOINT + str(partition).encode())
        self._db.write(batch, self._write)

    def size_on_disk(self) -> int:
        """Bytes of the store's files."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
