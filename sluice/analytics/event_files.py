"""A page of events (`sluice.analytics.events`) as the bytes of a CSV or parquet file, made
block by block, so a caller can send each block on before the next is read.

CSV: a header row, then one row per event; timestamps in ISO 8601 UTC with milliseconds,
booleans `true`/`false`, NULL empty, the context a JSON object. Parquet: one row group per
block, typed columns (timestamps `timestamp[ms, UTC]`), the same names.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any, Literal, get_args

from sluice.analytics.events import EventSource

EventFormat = Literal["csv", "parquet"]
EVENT_FORMATS: tuple[str, ...] = get_args(EventFormat)
CONTENT_TYPES: dict[str, str] = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}

Block = list[tuple[Any, ...]]


def file_chunks(fmt: EventFormat, source: EventSource, blocks: Iterable[Block]) -> Iterator[bytes]:
    """The file of `blocks` in `fmt`, a chunk per block (and the header or footer)."""
    if fmt == "csv":
        return csv_chunks(source, blocks)
    if fmt == "parquet":
        return parquet_chunks(source, blocks)
    raise ValueError(f"fmt must be one of {', '.join(EVENT_FORMATS)}, but {fmt!r} is given")


def csv_chunks(source: EventSource, blocks: Iterable[Block]) -> Iterator[bytes]:
    """The header row, then a chunk of rows per block."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([c.name for c in source.columns])
    yield text.getvalue().encode()
    cells = [_iso if c.type == "timestamp_ms" else _bool if c.type == "bool" else _plain for c in source.columns]
    for block in blocks:
        text.seek(0)
        text.truncate()
        writer.writerows([[cell(v) for cell, v in zip(cells, row)] for row in block])
        yield text.getvalue().encode()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")


def _bool(value: bool | None) -> str:
    return "" if value is None else "true" if value else "false"


def _plain(value: Any) -> Any:
    return "" if value is None else value


class _Chunks:
    """A write-only file that keeps what was written until `take` hands it over."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def parquet_chunks(source: EventSource, blocks: Iterable[Block]) -> Iterator[bytes]:
    """A parquet file written a row group per block: each chunk is what that row group
    added, the last one the footer."""
    import pyarrow as pa  # deferred: a second to import, and only this route needs it
    import pyarrow.parquet as pq

    timestamp = pa.timestamp("ms", tz="UTC")
    types = {"string": pa.string(), "bool": pa.bool_(), "float64": pa.float64(), "uint32": pa.uint32(),
             "uint64": pa.uint64(), "timestamp_ms": timestamp}
    schema = pa.schema([pa.field(c.name, types[c.type], nullable=c.nullable) for c in source.columns])

    def arrow(values: tuple[Any, ...], field: Any) -> Any:
        # Timestamps come as epoch milliseconds.
        return pa.array(values, pa.int64()).cast(timestamp) if field.type == timestamp else pa.array(values, field.type)

    sink = _Chunks()
    writer = pq.ParquetWriter(sink, schema)
    try:
        for block in blocks:
            if block:
                writer.write_table(pa.Table.from_arrays([arrow(v, f) for v, f in zip(zip(*block), schema)],
                                                        schema=schema))
            yield sink.take()
    finally:
        writer.close()
    yield sink.take()
