"""The events route's parameters: what openapi.yaml states (enums, ranges, the moment pattern)
is what the server checks, and each wrong one is refused naming it."""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest
import yaml

from services.api.events import DEFAULT_PAGE_ROWS, PARAMETERS, events_request
from services.api.openapi_schemas import OPENAPI
from services.api.params import MOMENT
from services.asgi import BadRequest
from sluice.analytics.event_files import EVENT_FORMATS
from sluice.analytics.events import EVENT_KINDS, MAX_PAGE_ROWS, Cursor

DOCUMENT = yaml.safe_load(OPENAPI.read_text())
OPERATION = DOCUMENT["paths"]["/v1/experiments/{experiment_id}/events"]["get"]


def parameter(name: str) -> dict:
    return next(p for p in OPERATION["parameters"] if p["name"] == name)["schema"]


def test_the_contract_states_the_parameters_the_server_checks() -> None:
    assert [p["name"] for p in OPERATION["parameters"]] == list(PARAMETERS)
    assert parameter("kind")["enum"] == list(EVENT_KINDS) and parameter("format")["enum"] == list(EVENT_FORMATS)
    assert (parameter("limit")["minimum"], parameter("limit")["maximum"], parameter("limit")["default"]) == (
        1, MAX_PAGE_ROWS, DEFAULT_PAGE_ROWS)
    assert DOCUMENT["components"]["schemas"]["Moment"]["pattern"] == MOMENT.pattern


def request(query: str):
    parsed = parse_qs(query, keep_blank_values=True)
    return events_request("exp", parsed, lambda name: parsed[name][0] if name in parsed else None)


def test_defaults_are_a_page_of_serves_as_csv() -> None:
    wanted = request("")
    assert (wanted.format, wanted.query.kind, wanted.query.limit, wanted.query.entity) == ("csv", "serves", 10_000, None)
    wanted = request("kind=rewards&format=parquet&limit=5&entity=&since=1000&until=2026-11-30T10:00:00.5%2B01:00&"
                     f"page_token={Cursor('rewards', (7, 'x')).token()}")
    q = wanted.query
    assert (q.kind, q.limit, q.entity, q.since_ms, q.until_ms, q.after) == (  # 09:00:00.5 UTC
        "rewards", 5, "", 1000, 1_796_029_200_500, Cursor("rewards", (7, "x")))


@pytest.mark.parametrize(("query", "name"), [("kind=x", "kind"), ("format=", "format"), ("format=json", "format"), ("limit=-1", "limit"),
                                             ("limit=1e3", "limit"), ("since=", "since"), ("until=5%0A", "until"),
                                             ("page_token=", "page_token"), ("sort=asc", "sort")])
def test_a_wrong_parameter_is_named(query: str, name: str) -> None:
    with pytest.raises(BadRequest) as refused:
        request(query)
    assert refused.value.status == 400 and f"query parameter '{name}'" in str(refused.value)
