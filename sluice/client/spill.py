"""A bounded, append-only spill file for Kafka records that could not be delivered.

Records are framed as `u32 length | u32 CRC-32 | payload`, the payload being
`u16 topic length | topic | i32 key length (-1 = no key) | key | value`. A torn write (a
crash in the middle of an append) fails its length or CRC check and is cut off when the file
is opened again. Replay progress is kept in a second file (`<name>.pos`): the byte offset up
to which records were delivered. A crash between delivery and the position update replays
those records once more (at least once; consumers deduplicate by event id).
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_HEAD = struct.Struct(">II")


@dataclass(frozen=True)
class SpilledRecord:
    topic: str
    key: bytes | None
    value: bytes
    end_offset: int  # file offset just past this record: the replay position once delivered


def _encode(topic: str, key: bytes | None, value: bytes) -> bytes:
    t = topic.encode()
    k = b"" if key is None else key
    payload = struct.pack(">H", len(t)) + t + struct.pack(">i", -1 if key is None else len(k)) + k + value
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def _decode(payload: bytes) -> tuple[str, bytes | None, bytes]:
    (tlen,) = struct.unpack_from(">H", payload, 0)
    topic = payload[2 : 2 + tlen].decode()
    (klen,) = struct.unpack_from(">i", payload, 2 + tlen)
    at = 6 + tlen
    key = None if klen < 0 else payload[at : at + klen]
    return topic, key, payload[at + max(klen, 0) :]


class SpillFile:
    """Thread-safe spill storage, bounded to `max_bytes` of pending records."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._pos_path = path.with_name(path.name + ".pos")
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_tail()
        self._file = open(path, "ab")  # noqa: SIM115 - kept open for the life of the object

    def _cut_torn_tail(self) -> None:
        if not self.path.exists():
            return
        good = 0
        with open(self.path, "rb") as f:
            data = f.read()
        while good + _HEAD.size <= len(data):
            length, crc = _HEAD.unpack_from(data, good)
            end = good + _HEAD.size + length
            if end > len(data) or zlib.crc32(data[good + _HEAD.size : end]) != crc:
                break
            good = end
        if good < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)

    @property
    def position(self) -> int:
        try:
            return int(self._pos_path.read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def pending_bytes(self) -> int:
        with self._lock:
            return self._file.tell() - self.position

    def append(self, topic: str, key: bytes | None, value: bytes) -> bool:
        """Append one record; False (and nothing written) when the bound would be exceeded."""
        record = _encode(topic, key, value)
        with self._lock:
            if self._file.tell() - self.position + len(record) > self.max_bytes:
                return False
            self._file.write(record)
            self._file.flush()
            return True

    def pending(self, limit: int = 10_000) -> Iterator[SpilledRecord]:
        """Up to `limit` records not yet marked delivered, in the order they were spilled."""
        with self._lock:
            self._file.flush()
            start = self.position
        with open(self.path, "rb") as f:
            f.seek(start)
            offset = start
            for _ in range(limit):
                head = f.read(_HEAD.size)
                if len(head) < _HEAD.size:
                    return
                length, _crc = _HEAD.unpack(head)
                payload = f.read(length)
                if len(payload) < length:
                    return
                offset += _HEAD.size + length
                topic, key, value = _decode(payload)
                yield SpilledRecord(topic, key, value, offset)

    def mark_delivered(self, end_offset: int) -> None:
        """Record that everything before `end_offset` was delivered; empty the file when all was."""
        with self._lock:
            if end_offset >= self._file.tell():
                self._file.truncate(0)
                self._file.seek(0)
                self._pos_path.unlink(missing_ok=True)
                return
            tmp = self._pos_path.with_suffix(".tmp")
            tmp.write_text(str(end_offset))
            os.replace(tmp, self._pos_path)

    def close(self) -> None:
        with self._lock:
            self._file.close()
