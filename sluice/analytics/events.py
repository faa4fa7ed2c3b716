"""An experiment's raw events from ClickHouse, a page at a time: its serves (one row per
serve event), its rewards (one row per reward event) or its evaluation dataset (one row per
serve that counts, with its attributed reward: the `attributed_serves` view that
`sluice export` writes).

Pages follow a stable order, the kind's `key` (event time first), and a page starts after
the key of the previous page's last row (keyset pagination: no OFFSET, so a page costs the
same wherever it is). Each key is one row however many times the sink landed its event.

A page is read in blocks of at most `BLOCK_ROWS` rows, each block its own short query that
starts after the previous block's last key. Neither the page nor a ClickHouse stream is held
open while the caller sends a block on: the embedded engine serves one call at a time, and
a stream kept open for a slow HTTP client would stall the sink for as long. The page's last
key is found first, by a query of the key columns alone, so the cursor of the next page is
known before the first row is sent (an HTTP header carries it).

Rows appended later with event times inside a page already read (late events) are not
seen by the pages after it; the pages are a consistent walk of the table as of each read,
not a snapshot.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson

from sluice.clickhouse import ClickHouseError
from sluice.errors import SluiceError

EventKind = Literal["serves", "rewards", "dataset"]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)
BLOCK_ROWS = 5_000
MAX_PAGE_ROWS = 100_000
_MAX_CURSOR_CHARS = 1024


class CursorError(SluiceError):
    """A page token that is not one this module made for the kind asked for."""


@dataclass(frozen=True)
class Column:
    """One output column: its name, the SQL that selects it, and its type
    (`string`, `bool`, `float64`, `uint32`, `uint64` or `timestamp_ms`; `nullable` when
    ClickHouse may give NULL)."""

    name: str
    sql: str
    type: str
    nullable: bool = False


_TIMESTAMP = Column("timestamp", "toUnixTimestamp64Milli(timestamp)", "timestamp_ms")
_CONTEXT = Column("context", "toJSONString(context)", "string")


def _strings(*names: str) -> tuple[Column, ...]:
    return tuple(Column(n, n, "string") for n in names)


@dataclass(frozen=True)
class EventSource:
    """Where a kind's rows come from (`table`, with `{db}`), its columns, and `key`: the
    columns whose values order the rows and name each row once (timestamp first)."""

    kind: EventKind
    table: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    experiment_filter: bool = True

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def key_indexes(self) -> tuple[int, ...]:
        names = [c.name for c in self.columns]
        return tuple(names.index(k) for k in self.key)


SOURCES: dict[str, EventSource] = {
    "serves": EventSource("serves", "{db}.serves", (
        *_strings("event_id", "serve_id", "experiment_id", "entity", "unit_id", "arm"),
        Column("in_experiment", "in_experiment", "bool"), Column("propensity", "propensity", "float64"),
        Column("weights_version", "weights_version", "uint64"), Column("bucket", "bucket", "uint32"),
        _TIMESTAMP, _CONTEXT), key=("timestamp", "event_id")),
    "rewards": EventSource("rewards", "{db}.rewards", (
        *_strings("event_id", "serve_id", "experiment_id", "entity", "name"),
        Column("value", "value", "float64"), Column("latency_ms", "latency_ms", "float64", nullable=True),
        Column("error", "error", "bool", nullable=True), _TIMESTAMP), key=("timestamp", "event_id")),
    # The evaluation dataset of `sluice export` (docs/evaluation-dataset.md); a serve id
    # names a serve within its entity, as the view keeps each once per entity.
    "dataset": EventSource("dataset", "{db}.attributed_serves(experiment = {e:String})", (
        *_strings("serve_id"), _TIMESTAMP, *_strings("experiment_id", "entity", "unit_id", "arm"),
        Column("in_experiment", "in_experiment", "bool"), Column("propensity", "propensity", "float64"),
        Column("weights_version", "weights_version", "uint64"), Column("bucket", "bucket", "uint32"), _CONTEXT,
        Column("reward", "reward", "float64"), Column("rewarded", "rewarded", "bool"),
        Column("reward_events", "reward_events", "uint64")),
        key=("timestamp", "entity", "serve_id"), experiment_filter=False),
}


@dataclass(frozen=True)
class Cursor:
    """A position in a kind's order: the key of the last row of a page (timestamp in epoch
    milliseconds, then the key's strings); the next page starts after it."""

    kind: EventKind
    key: tuple[Any, ...]

    def token(self) -> str:
        """The cursor as an opaque URL-safe page token."""
        return base64.urlsafe_b64encode(orjson.dumps([self.kind, *self.key])).rstrip(b"=").decode()

    @classmethod
    def from_token(cls, token: str, kind: EventKind) -> Cursor:
        """The cursor `token` stands for; `CursorError` unless a page of `kind` made it."""
        if len(token) > _MAX_CURSOR_CHARS:
            raise CursorError(f"is {len(token)} characters long; a page token is at most {_MAX_CURSOR_CHARS}")
        try:
            decoded = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        except (binascii.Error, ValueError, orjson.JSONDecodeError):
            raise CursorError(f"{token!r} is not a page token this API gave") from None
        source = SOURCES[kind]
        if (not isinstance(decoded, list) or len(decoded) != 1 + len(source.key) or decoded[0] not in SOURCES
                or type(decoded[1]) is not int or not all(isinstance(v, str) for v in decoded[2:])):
            raise CursorError(f"{token!r} is not a page token this API gave")
        if decoded[0] != kind:
            raise CursorError(f"was given for kind={decoded[0]}, not kind={kind}: page on with the kind it came from")
        return cls(kind, tuple(decoded[1:]))


@dataclass(frozen=True)
class EventQuery:
    """Which rows: of `experiment`, of `kind`, of one `entity` (None: all), with event
    times in [since_ms, until_ms) (epoch ms; None: unbounded), after `after`; at most
    `limit` of them."""

    experiment: str
    kind: EventKind
    limit: int
    entity: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    after: Cursor | None = None

    def __post_init__(self) -> None:
        if self.kind not in SOURCES:
            raise ValueError(f"kind must be one of {', '.join(EVENT_KINDS)}, but {self.kind!r} is given")
        if not 1 <= self.limit <= MAX_PAGE_ROWS:
            raise ValueError(f"limit must be an integer from 1 to {MAX_PAGE_ROWS}, but {self.limit!r} is given")
        if self.after is not None and self.after.kind != self.kind:
            raise ValueError(f"after is a cursor of kind {self.after.kind}, not of {self.kind}")


@dataclass
class EventPage:
    """A page being read: `blocks` yields its rows (tuples in the order of `source.columns`,
    timestamps in epoch ms) block by block, reading each as it is asked for; `next` is where
    the next page starts, None on the last page."""

    source: EventSource
    next: Cursor | None
    blocks: Iterator[list[tuple[Any, ...]]]


def read_page(client: Any, database: str, query: EventQuery, block_rows: int | None = None) -> EventPage:
    """Find the page's end and read its first block now (so a failing ClickHouse raises
    here, before anything is sent); the further blocks, of `block_rows` rows (default
    `BLOCK_ROWS`), are read as `blocks` is iterated. Raises `ClickHouseError`."""
    block_rows = block_rows or BLOCK_ROWS
    source = SOURCES[query.kind]
    ends = _run(client, *_select(source, database, query, keys_only=True, after=query.after, upto=None,
                                 rows=2, offset=query.limit - 1))
    last = tuple(ends[0]) if ends else None  # None: fewer than `limit` rows remain, all on this page
    following = Cursor(query.kind, last) if last is not None and len(ends) == 2 else None
    first = _block(client, database, source, query, query.after, last, min(block_rows, query.limit))
    return EventPage(source, following, _blocks(client, database, source, query, first, last, block_rows))


def _blocks(client: Any, database: str, source: EventSource, query: EventQuery, first: list[tuple[Any, ...]],
            last: tuple[Any, ...] | None, block_rows: int) -> Iterator[list[tuple[Any, ...]]]:
    block, sent = first, 0
    while True:
        yield block
        sent += len(block)
        if len(block) < block_rows or sent >= query.limit:
            return
        after = Cursor(query.kind, tuple(block[-1][i] for i in source.key_indexes))
        block = _block(client, database, source, query, after, last, min(block_rows, query.limit - sent))
        if not block:
            return


def _block(client: Any, database: str, source: EventSource, query: EventQuery, after: Cursor | None,
           upto: tuple[Any, ...] | None, rows: int) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in _run(client, *_select(source, database, query, keys_only=False, after=after, upto=upto,
                                                    rows=rows, offset=0))]


def _select(source: EventSource, database: str, query: EventQuery, *, keys_only: bool, after: Cursor | None,
            upto: tuple[Any, ...] | None, rows: int, offset: int) -> tuple[str, dict[str, Any]]:
    """The SQL of `rows` rows (or their keys) after `after` and up to `upto` (keys), skipping `offset`."""
    key_sql = ", ".join(source.column(k).sql for k in source.key)
    key_types = ["Int64", *(["String"] * (len(source.key) - 1))]
    where, params = [], {"e": query.experiment}
    if source.experiment_filter:
        where.append("experiment_id = {e:String}")
    if query.entity is not None:
        where.append("entity = {x:String}")
        params["x"] = query.entity
    if query.since_ms is not None:
        where.append("toUnixTimestamp64Milli(timestamp) >= {since:Int64}")
        params["since"] = query.since_ms
    if query.until_ms is not None:
        where.append("toUnixTimestamp64Milli(timestamp) < {until:Int64}")
        params["until"] = query.until_ms
    for name, key, op in (("a", after.key if after else None, ">"), ("u", upto, "<=")):
        if key is not None:
            values = ", ".join(f"{{{name}{i}:{t}}}" for i, t in enumerate(key_types))
            where.append(f"({key_sql}) {op} ({values})")
            params.update({f"{name}{i}": v for i, v in enumerate(key)})
    selected = key_sql if keys_only else ", ".join(c.sql for c in source.columns)
    sql = (f"SELECT {selected} FROM {source.table.replace('{db}', database)} "
           f"WHERE {' AND '.join(where) or '1'} ORDER BY {key_sql} LIMIT 1 BY {key_sql} "
           f"LIMIT {int(rows)}{f' OFFSET {int(offset)}' if offset else ''}")
    return sql, params


def _run(client: Any, sql: str, params: dict[str, Any]) -> list[Any]:
    try:
        return client.query(sql, parameters=params).result_rows
    except Exception as exc:  # clickhouse-connect's and chDB's own errors
        raise ClickHouseError(f"reading events from ClickHouse failed: {exc}") from exc
