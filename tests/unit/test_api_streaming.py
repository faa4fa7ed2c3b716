"""The control API streams an events page: headers first with no content-length, a chunk per
block of rows read as the one before is sent, the body's end last; a ClickHouse failure
before the first byte is a JSON 503, one midway leaves the body unended (a broken
transfer, never a short file that looks whole). ClickHouse is a stand-in here that answers
the page's queries from a list of rows."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from typing import Any

import orjson
import pytest

from services.api.app import ApiApp
from sluice.analytics import events
from sluice.tokens import new_token
from tests.analytics_support import spec

TOKEN, SECRET = new_token("reader", "read", 0)
ROWS = [(f"ev-{i:02d}", f"s-{i}", "exp", "e1", f"u{i}", "a", True, 0.5, 1, i, 1_000 + i // 2, "{}") for i in range(9)]


class Control:
    def tokens(self) -> dict[str, Any]:
        return {TOKEN.token_id: TOKEN}

    def experiment(self, experiment_id: str) -> Any:
        return spec(experiment_id, ["a", "b"])


class Result:
    def __init__(self, rows: list[tuple]) -> None:
        self.result_rows = rows


class ClickHouse:
    """Answers the serves queries of a page from `ROWS` (key: timestamp, event_id); the
    `fail_at`-th query raises."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.queries = 0
        self.fail_at = fail_at

    def query(self, sql: str, parameters: dict[str, Any]) -> Result:
        self.queries += 1
        if self.queries == self.fail_at:
            raise RuntimeError("Code: 241. Memory limit exceeded")
        key = lambda r: (r[10], r[0])  # noqa: E731
        rows = sorted(ROWS, key=key)
        if "a0" in parameters:
            rows = [r for r in rows if key(r) > (parameters["a0"], parameters["a1"])]
        if "u0" in parameters:
            rows = [r for r in rows if key(r) <= (parameters["u0"], parameters["u1"])]
        limit, offset = re.search(r"LIMIT (\d+)(?: OFFSET (\d+))?$", sql).groups()  # type: ignore[union-attr]
        rows = rows[int(offset or 0):][:int(limit)]
        keys_only = sql.startswith("SELECT toUnixTimestamp64Milli(timestamp), event_id FROM")
        return Result([key(r) for r in rows] if keys_only else rows)


def get(clickhouse: ClickHouse, query: str) -> list[dict[str, Any]]:
    """The ASGI messages the API on `clickhouse` sends for a GET of experiment exp's events."""
    app = ApiApp(Control(), clickhouse=clickhouse)  # type: ignore[arg-type]
    sent: list[dict[str, Any]] = []
    received = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> dict[str, Any]:
        try:
            return next(received)
        except StopIteration:
            await asyncio.sleep(3600)  # the client stays
            raise

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/v1/experiments/exp/events", "query_string": query.encode(),
             "headers": [(b"authorization", f"Bearer {SECRET}".encode())]}
    asyncio.run(app(scope, receive, send))
    return sent


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch) -> None:
    monkeypatch.setattr(events, "BLOCK_ROWS", 2)


def test_a_page_is_sent_a_block_at_a_time_after_its_headers() -> None:
    clickhouse = ClickHouse()
    sent = get(clickhouse, "limit=5")
    start, *chunks = sent
    headers = dict(start["headers"])
    assert start["status"] == 200 and b"content-length" not in headers
    assert headers[b"content-type"] == b"text/csv; charset=utf-8"
    assert events.Cursor.from_token(headers[b"x-next-page-token"].decode(), "serves").key == (1002, "ev-04")
    assert [c.get("more_body") for c in chunks] == [True, True, True, True, False]  # header row, 3 blocks, end
    rows = list(csv.DictReader(io.StringIO(b"".join(c["body"] for c in chunks).decode())))
    assert [r["event_id"] for r in rows] == [f"ev-{i:02d}" for i in range(5)]
    assert clickhouse.queries == 4  # the page's end, then one query per block


def test_a_failure_before_the_first_byte_is_a_json_503() -> None:
    start, body = get(ClickHouse(fail_at=2), "")
    assert start["status"] == 503 and dict(start["headers"])[b"content-length"] == str(len(body["body"])).encode()
    assert "Memory limit exceeded" in orjson.loads(body["body"])["error"]


def test_a_failure_midway_leaves_the_body_unended() -> None:
    sent = get(ClickHouse(fail_at=3), "limit=5")
    assert sent[0]["status"] == 200
    assert all(m.get("more_body") for m in sent[1:]) and len(sent) == 3  # header row and the first block
