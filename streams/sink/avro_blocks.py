"""ClickHouse decodes the Avro itself: a batch of one writer schema becomes one Avro object
container file, which one `INSERT ... SELECT` reads.

Why: decoding in Python (fastavro, then row tuples, then clickhouse-connect's serialisation
to Native format) costs about 12 µs a row; ClickHouse's C++ Avro reader does the same work,
insert included, in about 1.5 µs.

The file. A single-object message is `C3 01 | fingerprint (8 bytes) | body`, and all messages
of one writer start with the same 10 bytes. So the messages joined end to end, without the
first header and with one more header at the end, are records `body | next header`: one
block of a container file whose schema is the writer's record with a trailing `fixed(10)`.
Python only joins bytes.

The checks. ClickHouse's reader is more lenient than fastavro where it matters: it does not
check UTF-8, and a body with bytes left over (or a truncated one) shifts the reading of what
follows instead of failing. So every row must end with exactly the header it should and hold
valid UTF-8 in every string, and (as clickhouse-connect requires) no negative number for an
unsigned column; otherwise the statement throws and inserts nothing, and the sink decodes
those messages in Python to find the bad ones and their reasons. Tested against the Python
path: same rows, same dead letters.

Lineage. One file holds a topic's messages of one writer from all partitions of a batch
(one insert costs ~40 ms in the embedded engine whatever its size, so one per partition would
cap a steady stream's throughput). Each partition's messages are a segment of consecutive
offsets; a row's `_partition` and `_offset` follow from its number in the file.

Which writer schemas qualify: flat records of primitive fields, `timestamp-millis` longs,
maps of strings and nullable numbers or booleans, whose table columns are their fields by
name. A column the writer lacks takes the table's default, so it must default to null in the
newest schema too (as the fields added so far do); otherwise the Python path is used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from sluice.avro import SchemaVersion
from sluice.avro.serde import HEADER_LEN, MAGIC
from sluice.clickhouse import sql_string

_NEXT_HEADER = "sluice_next_header"  # the trailing fixed(10) field of every record in a block
_SCALARS = frozenset({"boolean", "int", "long", "float", "double"})


@dataclass(frozen=True)
class Segment:
    """The messages of one partition in a container file: consecutive offsets from `first_offset`."""

    partition: int
    first_offset: int
    count: int

    @property
    def last_offset(self) -> int:
        return self.first_offset + self.count - 1


@dataclass(frozen=True)
class BlockPlan:
    """How messages of one writer schema go into one table as an Avro container file."""

    header: bytes  # the 10-byte single-object header all these messages start with
    columns: tuple[str, ...]  # the table columns the writer's fields fill, in field order
    structure: str  # ClickHouse structure of the file's columns
    checks: str  # SQL condition every row must meet, see the module docstring
    container_header: bytes  # magic, metadata (writer schema + next-header field), sync marker
    sync: bytes

    def container(self, values: list[bytes]) -> bytes:
        """The container file holding `values`, whole single-object messages of this writer.

        Each value must start with `header`; the caller groups them so.
        """
        data = b"".join([memoryview(values[0])[HEADER_LEN:], *values[1:], self.header])
        return b"".join((self.container_header, _long(len(values)), _long(len(data)), data, self.sync))

    def insert_select(self, table: str, topic: str, segments: list[Segment], token: str) -> tuple[str, str]:
        """The `INSERT` and the `SELECT` (which names the file `{data}`) that write a container
        file's rows to `table`, deduplicated by `token`. The file's rows are the messages of
        `segments`, in that order: each row's lineage is its segment's partition, and the
        segment's first offset plus the row's place in the segment."""
        columns = ", ".join(self.columns)
        starts = [sum(s.count for s in segments[:i]) for i in range(len(segments))]
        partitions = [s.partition for s in segments]
        firsts = [s.first_offset for s in segments]
        # One thread keeps rowNumberInAllBlocks() in file order.
        insert = (f"INSERT INTO {table} ({columns}, _topic, _partition, _offset) "
                  f"SETTINGS insert_deduplication_token = {sql_string(token)}, max_threads = 1")
        numbered = (f"SELECT *, rowNumberInAllBlocks() AS sluice_row, "
                    f"arrayLastIndex(start -> start <= sluice_row, {starts}) AS sluice_segment FROM {{data}}")
        refusal = sql_string(f"a message of {topic} does not end where its writer schema does, or holds invalid UTF-8 or a "
                             "negative number for an unsigned column")
        select = (f"SELECT {columns}, {sql_string(topic)}, {partitions}[sluice_segment], "
                  f"{firsts}[sluice_segment] + (sluice_row - {starts}[sluice_segment]) "
                  f"FROM ({numbered}) WHERE throwIf(NOT ({self.checks}), {refusal}) = 0")
        return insert, select


def plan_blocks(writer: SchemaVersion, reader: SchemaVersion, route_columns: tuple[str, ...],
                column_types: dict[str, str]) -> BlockPlan | None:
    """The plan for messages of `writer` into the `route_columns` of a table whose columns
    have `column_types` (name -> ClickHouse type), or None when ClickHouse should not read
    them: a field of a type the checks do not cover, or a column the writer lacks that does
    not default to null in `reader` (the newest version), which the Python path would fill."""
    fields = {f["name"]: f["type"] for f in writer.self_contained["fields"]}
    null_by_default = {f["name"] for f in reader.self_contained["fields"] if "default" in f and f["default"] is None}
    if any(c not in fields and c not in null_by_default for c in route_columns):
        return None
    columns = tuple(c for c in route_columns if c in fields)
    if not all(_readable(fields[c]) for c in columns):
        return None
    header = MAGIC + writer.header_fingerprint
    read_as = {c: _read_as(column_types[c]) for c in columns}
    # Compared as hex: an error message that quotes the constant stays printable.
    checks = [f"hex({_NEXT_HEADER}) = '{header.hex().upper()}'"]
    checks += [check for c in columns if (check := _utf8_check(c, fields[c]))]
    checks += [_sign_check(c, read_as[c]) for c in columns if read_as[c] != column_types[c]]
    structure = ", ".join(f"{c} {read_as[c]}" for c in columns) + f", {_NEXT_HEADER} FixedString({HEADER_LEN})"
    next_header = {"name": _NEXT_HEADER, "type": {"type": "fixed", "name": "SluiceNextHeader", "size": HEADER_LEN}}
    schema = dict(writer.self_contained, fields=[*writer.self_contained["fields"], next_header])
    sync = os.urandom(16)
    return BlockPlan(header, columns, structure, " AND ".join(checks), _container_header(schema, sync), sync)


def _readable(avro_type: Any) -> bool:
    """Whether ClickHouse reads a field of this type here: the types the checks cover."""
    if isinstance(avro_type, str):
        return avro_type == "string" or avro_type in _SCALARS
    if isinstance(avro_type, dict):
        return (avro_type.get("type") == "long" and avro_type.get("logicalType") == "timestamp-millis") or (
            avro_type.get("type") == "map" and avro_type.get("values") == "string")
    if isinstance(avro_type, list) and len(avro_type) == 2 and "null" in avro_type:
        return all(isinstance(branch, str) and (branch == "null" or branch in _SCALARS) for branch in avro_type)
    return False


def _read_as(table_type: str) -> str:
    """The type ClickHouse reads a column as: the table's, except that unsigned columns are
    read signed and checked, since clickhouse-connect refuses a negative value for them (the
    record is dead-lettered) where a cast would wrap it silently."""
    if table_type.startswith("UInt"):
        return "Int64"
    if table_type.startswith("Nullable(UInt"):
        return "Nullable(Int64)"
    return table_type


def _sign_check(column: str, read_as: str) -> str:
    return f"ifNull({column} >= 0, 1)" if read_as.startswith("Nullable") else f"{column} >= 0"


def _utf8_check(column: str, avro_type: Any) -> str | None:
    """The SQL condition that a field's text is valid UTF-8 (as fastavro requires), or None
    when the field holds no text."""
    if avro_type == "string":
        return f"isValidUTF8({column})"
    if isinstance(avro_type, dict) and avro_type.get("type") == "map":
        return f"arrayAll(x -> isValidUTF8(x), mapKeys({column})) AND arrayAll(x -> isValidUTF8(x), mapValues({column}))"
    return None


def _container_header(schema: dict[str, Any], sync: bytes) -> bytes:
    """Magic, the metadata map (schema, no compression) and the sync marker of a container file."""
    meta = {b"avro.schema": json.dumps(schema).encode(), b"avro.codec": b"null"}
    parts = [b"Obj\x01", _long(len(meta))]
    for key, value in meta.items():
        parts += [_long(len(key)), key, _long(len(value)), value]
    parts += [_long(0), sync]
    return b"".join(parts)


def _long(n: int) -> bytes:
    """An Avro long: zig-zag, then a little-endian base-128 varint."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
