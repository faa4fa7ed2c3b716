"""An experiment's events read a page at a time from the real ClickHouse engine
(`sluice.analytics.events`) and written as CSV or parquet (`sluice.analytics.event_files`):
paging with any page and block size gives every event once, in order, however many times it
landed; CSV and parquet hold the same rows; the dataset is `sluice export`'s."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow.parquet as pq
import pytest

from sluice.analytics.event_files import file_chunks
from sluice.analytics.events import SOURCES, Cursor, CursorError, EventQuery, read_page
from sluice.analytics.export import COLUMNS, query_rows
from sluice.clickhouse import migrate
from tests.analytics_support import REWARD_COLS, SERVE_COLS, land_spec, spec, token

pytestmark = pytest.mark.integration
# Recent event times: rows older than the tables' TTL vanish.
T0 = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)


def ms(at: datetime) -> int:
    return round(at.timestamp() * 1000)


@pytest.fixture
def landed(clickhouse, database) -> dict[str, list[list[Any]]]:
    """25 serves over 3 entities, several sharing a millisecond, the first 6 landed twice (a
    sink that retried without its dedup token); a click for every third serve and a health
    report (NULL-less) for serve 1; and an experiment beside it that must not show."""
    migrate(clickhouse, database=database)
    land_spec(clickhouse, database, spec("exp", ["a", "b"]))
    serves, rewards = [], []
    for i in range(25):
        at, arm = T0 + timedelta(seconds=i // 3), "ab"[i % 2]
        serves.append([str(uuid.uuid4()), token(i, at, arm), "exp", f"e{i % 3}", f"u{i}", arm, True, 0.5, 2, i, at,
                       {"i": str(i)}])
        if i % 3 == 0:
            rewards.append([str(uuid.uuid4()), serves[-1][1], "exp", f"e{i % 3}", "click", 1.0, None, None,
                            at + timedelta(minutes=1)])
    rewards.append([str(uuid.uuid4()), serves[1][1], "exp", "e1", "sluice.request", 0.0, 80.0, True,
                    T0 + timedelta(minutes=2)])
    other = [[str(uuid.uuid4()), token(99, T0, "a"), "other", "e0", "u", "a", True, 0.5, 2, 0, T0, {}]]
    clickhouse.insert(f"{database}.serves", serves + serves[:6] + other, column_names=SERVE_COLS)
    clickhouse.insert(f"{database}.rewards", rewards + rewards[:2], column_names=REWARD_COLS)
    return {"serves": serves, "rewards": rewards}


def every_page(client: Any, database: str, limit: int, block_rows: int, **filters: Any) -> list[list[tuple]]:
    """The rows of each page, following the cursors (through their tokens) to the last."""
    pages, after = [], None
    kind = filters.pop("kind", "serves")
    while True:
        page = read_page(client, database, EventQuery("exp", kind, limit, after=after, **filters), block_rows)
        pages.append([row for block in page.blocks for row in block])
        if page.next is None:
            return pages
        after = Cursor.from_token(page.next.token(), kind)


@pytest.mark.parametrize(("limit", "block_rows"), [(1, 1), (4, 3), (7, 7), (25, 10), (1000, 5000)])
def test_paging_gives_every_event_once_in_time_and_event_id_order(clickhouse, database, landed, limit: int,
                                                                    block_rows: int) -> None:
    pages = every_page(clickhouse, database, limit, block_rows)
    rows = [row for page in pages for row in page]
    expected = sorted((ms(s[10]), s[0]) for s in landed["serves"])
    assert [(r[10], r[0]) for r in rows] == expected
    assert [len(p) for p in pages] == [limit] * (25 // limit) + ([25 % limit] if 25 % limit else [])
    landed_by_id = {s[0]: s for s in landed["serves"]}
    for row in rows:  # every column as it landed: timestamps in epoch ms, the context as JSON
        serve = landed_by_id[row[0]]
        assert row == (*serve[:10], ms(serve[10]), '{"i":"%s"}' % serve[11]["i"])


def test_entity_and_time_filters_bound_the_pages(clickhouse, database, landed) -> None:
    since, until = T0 + timedelta(seconds=2), T0 + timedelta(seconds=6)
    rows = [r for p in every_page(clickhouse, database, 2, 2, entity="e1", since_ms=ms(since), until_ms=ms(until))
            for r in p]
    expected = sorted((ms(s[10]), s[0]) for s in landed["serves"] if s[3] == "e1" and since <= s[10] < until)
    assert [(r[10], r[0]) for r in rows] == expected and len(expected) == 4
    assert every_page(clickhouse, database, 10, 10, entity="e9") == [[]]


def file_rows(fmt: str, kind: str, client: Any, database: str, **filters: Any) -> list[dict[str, Any]]:
    """The rows of one page of `kind` written as `fmt` and read back, as text."""
    page = read_page(client, database, EventQuery("exp", kind, 1000, **filters), block_rows=4)
    data = b"".join(file_chunks(fmt, page.source, page.blocks))
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(data.decode())))
    table = pq.read_table(io.BytesIO(data))
    assert pq.ParquetFile(io.BytesIO(data)).metadata.num_row_groups > 1  # written a block at a time
    text = {"True": "true", "False": "false", "None": ""}
    return [{k: v.isoformat(timespec="milliseconds") if isinstance(v, datetime) else text.get(str(v), str(v))
             for k, v in row.items()} for row in table.to_pylist()]


@pytest.mark.parametrize("kind", ["serves", "rewards", "dataset"])
def test_csv_and_parquet_hold_the_same_rows(clickhouse, database, landed, kind: str) -> None:
    as_csv = file_rows("csv", kind, clickhouse, database)
    assert as_csv == file_rows("parquet", kind, clickhouse, database)
    assert len(as_csv) == {"serves": 25, "rewards": 10, "dataset": 25}[kind]
    if kind == "rewards":
        report = next(r for r in as_csv if r["name"] == "sluice.request")
        assert (report["latency_ms"], report["error"]) == ("80.0", "true")
        assert {(r["latency_ms"], r["error"]) for r in as_csv if r["name"] == "click"} == {("", "")}
    if kind == "serves":
        assert as_csv[0]["timestamp"] == T0.isoformat(timespec="milliseconds") and as_csv[0]["context"].startswith('{"i":')


def test_the_dataset_is_the_rows_of_sluice_export(clickhouse, database, landed) -> None:
    assert [c.name for c in SOURCES["dataset"].columns] == COLUMNS
    rows = [r for p in every_page(clickhouse, database, 3, 2, kind="dataset", entity="e2") for r in p]
    exported = query_rows(clickhouse, "exp", database=database, entity="e2")
    by_serve = {r[0]: r for r in exported}
    assert sorted(r[0] for r in rows) == sorted(by_serve) and len(rows) == 8
    for row in rows:
        want = dict(zip(COLUMNS, by_serve[row[0]]))
        assert dict(zip(COLUMNS, row)) == {**want, "timestamp": ms(want["timestamp"])}
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)


def test_a_page_token_is_for_its_own_kind_only() -> None:
    cursor = Cursor("serves", (1, "x"))
    assert Cursor.from_token(cursor.token(), "serves") == cursor
    with pytest.raises(CursorError, match="kind=serves, not kind=rewards"):
        Cursor.from_token(cursor.token(), "rewards")
    for bad in ["nope", "x" * 2000, Cursor("dataset", (1, "e", "s")).token()[:-3], "W10"]:
        with pytest.raises(CursorError):
            Cursor.from_token(bad, "dataset")
