"""The control API's events route on the real broker and the embedded ClickHouse that the API
process fills with its own sink: every serve once and in order through the pages, the same
rows as CSV and parquet, filters, tokens, and a 4xx naming each bad parameter."""

from __future__ import annotations

import csv
import io
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from sluice.kafka import TopicNames, ensure_topics, topic_specs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from api_support import ApiServer, check_answer, create_token  # noqa: E402
from stream_support import Traffic, bandit_spec  # noqa: E402

pytestmark = pytest.mark.integration
EVENTS = "/v1/experiments/{experiment_id}/events"
SERVES_PER_ENTITY = 40


def get(server: ApiServer, path: str, token: str | None) -> tuple[int, bytes, dict[str, str]]:
    """(status, body bytes, headers with lower-case names) of a GET."""
    request = urllib.request.Request(server.url + path, headers={"authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read(), {k.lower(): v for k, v in answer.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), {k.lower(): v for k, v in exc.headers.items()}


def rows_of(body: bytes, content_type: str) -> list[dict[str, str]]:
    """A CSV or parquet body's rows, every value as CSV writes it."""
    if content_type.startswith("text/csv"):
        return list(csv.DictReader(io.StringIO(body.decode())))
    text = {"True": "true", "False": "false", "None": ""}
    return [{k: v.isoformat(timespec="milliseconds") if isinstance(v, datetime) else text.get(str(v), str(v))
             for k, v in row.items()} for row in pq.read_table(io.BytesIO(body)).to_pylist()]


@pytest.fixture(scope="module")
def landed(kafka_bootstrap, serde, tmp_path_factory):
    """An API with results on, experiment `ranking`, and serves of two entities (two serves
    in each millisecond) with a click for some, landed by the API's sink; returns the API, a
    read token and the traffic."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    ensure_topics(kafka_bootstrap, topic_specs(TopicNames(prefix), partitions=3))
    writer = create_token(kafka_bootstrap, prefix, "writer", "write")["secret"]
    reader = create_token(kafka_bootstrap, prefix, "analyst", "read")["secret"]
    server = ApiServer(kafka_bootstrap, prefix, tmp_path_factory.mktemp("api"))
    server.wait_ready()
    assert server.request("POST", "/v1/experiments", bandit_spec("ranking", ["a", "b"]).model_dump(mode="json"),
                          token=writer)[0] == 201
    traffic, rng = Traffic(), np.random.default_rng(7)
    start = int(time.time() * 1000) - 3_600_000
    for entity in ("site-1", "site-2"):
        for i in range(SERVES_PER_ENTITY):
            serve_id = traffic.serve("ranking", entity, "ab"[int(rng.integers(2))], start + (i // 2) * 1000)
            if rng.random() < 0.3:
                traffic.reward("ranking", entity, serve_id, 1.0, start + (i // 2) * 1000 + 500)
    traffic.produce(kafka_bootstrap, prefix, serde)
    rewards = sum(kind == "rewards" for kind, _, _ in traffic.events)
    deadline = time.monotonic() + 60
    for kind, want in (("serves", 2 * SERVES_PER_ENTITY), ("rewards", rewards)):
        while len(rows_of(get(server, f"/v1/experiments/ranking/events?kind={kind}", reader)[1], "text/csv")) < want:
            assert time.monotonic() < deadline, f"the sink inside the API did not land the {kind}"
            time.sleep(0.2)
    yield server, reader, traffic
    server.stop()


def sent(traffic: Traffic, kind: str) -> list[dict[str, Any]]:
    """The records of `kind` as produced, in the route's order (event time, event id)."""
    return sorted((r for k, _, r in traffic.events if k == kind), key=lambda r: (r["timestamp"], r["event_id"]))


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")


def test_paging_through_the_serves_gives_each_once_in_order(landed) -> None:
    server, reader, traffic = landed
    path, pages = "/v1/experiments/ranking/events?kind=serves&limit=7", []
    while path:
        status, body, headers = get(server, path, reader)
        assert status == 200 and headers["content-type"] == "text/csv; charset=utf-8"
        assert "content-length" not in headers and headers["transfer-encoding"] == "chunked"  # streamed
        pages.append(rows_of(body, headers["content-type"]))
        link, token = headers.get("link"), headers.get("x-next-page-token")
        assert (link is None) == (token is None)
        path = link and link.split(">")[0].lstrip("<")
        assert path is None or path.endswith(f"page_token={token}") and "kind=serves&limit=7" in path
    assert [len(p) for p in pages] == [7] * 11 + [3]
    want = sent(traffic, "serves")
    got = [row for page in pages for row in page]
    assert [r["event_id"] for r in got] == [r["event_id"] for r in want]
    assert [(r["serve_id"], r["entity"], r["arm"], r["timestamp"], r["propensity"], r["context"]) for r in got] == [
        (r["serve_id"], r["entity"], r["arm"], iso(r["timestamp"]), "0.25", "{}") for r in want]


@pytest.mark.parametrize("kind", ["serves", "rewards", "dataset"])
def test_csv_and_parquet_give_the_same_rows(landed, kind: str) -> None:
    server, reader, traffic = landed
    answers = {fmt: get(server, f"/v1/experiments/ranking/events?kind={kind}&format={fmt}&limit=100000", reader)
               for fmt in ("csv", "parquet")}
    assert answers["parquet"][2]["content-type"] == "application/vnd.apache.parquet"
    assert answers["parquet"][2]["content-disposition"] == f'attachment; filename="ranking-{kind}.parquet"'
    as_csv, as_parquet = (rows_of(body, headers["content-type"]) for _, body, headers in answers.values())
    assert as_csv == as_parquet
    if kind != "dataset":
        assert [r["event_id"] for r in as_csv] == [r["event_id"] for r in sent(traffic, kind)]
    else:  # a serve is rewarded when a click was sent for it
        clicked = {r["serve_id"] for k, _, r in traffic.events if k == "rewards"}
        assert len(as_csv) == 2 * SERVES_PER_ENTITY
        assert {r["serve_id"] for r in as_csv if r["rewarded"] == "true"} == clicked


def test_entity_and_time_filters(landed) -> None:
    server, reader, traffic = landed
    serves = [r for r in sent(traffic, "serves") if r["entity"] == "site-2"]
    since, until = serves[10]["timestamp"], serves[30]["timestamp"]
    since_iso = datetime.fromtimestamp(since / 1000, timezone.utc).isoformat().replace("+00:00", "Z")
    status, body, headers = get(server, f"/v1/experiments/ranking/events?entity=site-2&since={since_iso}"
                                        f"&until={until}&limit=100", reader)
    assert status == 200 and "link" not in headers
    assert [r["event_id"] for r in rows_of(body, headers["content-type"])] == [
        r["event_id"] for r in serves if since <= r["timestamp"] < until]
    status, body, _ = get(server, "/v1/experiments/ranking/events?entity=site-9", reader)
    assert (status, body.decode().splitlines()[1:]) == (200, [])


def test_a_read_token_is_enough_and_no_token_is_refused(landed) -> None:
    server, reader, _ = landed
    assert get(server, "/v1/experiments/ranking/events?limit=1", reader)[0] == 200
    status, body, headers = get(server, "/v1/experiments/ranking/events", None)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    check_answer("GET", EVENTS, status, orjson.loads(body))


@pytest.mark.parametrize(("query", "status", "words"), [
    ("kind=clicks", 400, "query parameter 'kind' must be one of serves, rewards, dataset, not 'clicks'"),
    ("format=xml", 400, "query parameter 'format' must be one of csv, parquet"),
    ("limit=0", 400, "query parameter 'limit' must be an integer from 1 to 100000, not '0'"),
    ("limit=100001", 400, "query parameter 'limit'"),
    ("limit=ten", 400, "query parameter 'limit'"),
    ("since=yesterday", 400, "query parameter 'since' must be epoch milliseconds"),
    ("until=2026-11-30T10:00:00", 400, "query parameter 'until'"),
    ("page_token=nope", 400, "query parameter 'page_token'"),
    ("entity=a&entity=b", 400, "query parameter 'entity' is given 2 times"),
    ("colour=red", 400, "query parameter 'colour' is not known here"),
])
def test_a_bad_parameter_gets_a_400_naming_it(landed, query: str, status: int, words: str) -> None:
    server, reader, _ = landed
    got, body, headers = get(server, f"/v1/experiments/ranking/events?{query}", reader)
    error = orjson.loads(body)
    check_answer("GET", EVENTS, got, error)
    assert got == status and words in error["error"], error


def test_a_page_token_pages_on_its_own_kind_only_and_an_unknown_experiment_is_404(landed) -> None:
    server, reader, _ = landed
    token = get(server, "/v1/experiments/ranking/events?kind=rewards&limit=1", reader)[2]["x-next-page-token"]
    status, body, _ = get(server, f"/v1/experiments/ranking/events?kind=serves&page_token={token}", reader)
    assert status == 400 and "kind=rewards, not kind=serves" in orjson.loads(body)["error"]
    assert get(server, f"/v1/experiments/ranking/events?kind=rewards&page_token={token}", reader)[0] == 200
    status, body, _ = get(server, "/v1/experiments/nope/events", reader)
    assert status == 404 and "'nope' is not on" in orjson.loads(body)["error"]
