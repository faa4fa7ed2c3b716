"""Requests generated from the control API's OpenAPI document, against the real server: no
answer is a 5xx or one the document does not list, every body matches the document, a
request the document calls valid is never refused as malformed, and one it calls invalid
always gets a 4xx.

The oracle is the document itself (its schemas, read with integers written without a
fraction, as its description says) plus, for a spec, the rules across fields that JSON
Schema cannot state, checked with the spec model (`spec_from_mapping`).
"""

from __future__ import annotations

import copy
import json
import re
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sluice.analytics.events import Cursor
from sluice.core.spec import SpecError, spec_from_mapping
from sluice.kafka import TopicNames, ensure_topics, topic_specs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from http_support import exchange  # noqa: E402
from api_support import OPENAPI, ApiServer, check_answer, contract_validator, create_token  # noqa: E402
from stream_support import bandit_spec  # noqa: E402

pytestmark = pytest.mark.integration
SCHEMAS = OPENAPI["components"]["schemas"]
SPEC_VALID = contract_validator({"$ref": "#/components/schemas/ExperimentSpec"})
UPDATE_VALID = contract_validator({"$ref": "#/components/schemas/ExperimentSpecUpdate"})
ONE = "/v1/experiments/{experiment_id}"
EVENTS = f"{ONE}/events"
PROPERTY_RUN = settings(max_examples=120, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that a property's schema (enum, bounded numbers, patterned strings, a choice of
    those) allows, mostly; anything else falls back to arbitrary JSON."""
    if "$ref" in schema:
        return json_values
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of([from_schema(s) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "integer":
        return st.integers(schema.get("minimum", -10**6), schema.get("maximum", 10**6))
    if kind == "number":
        return st.floats(schema.get("minimum", schema.get("exclusiveMinimum", -1e6)),
                         schema.get("maximum", schema.get("exclusiveMaximum", 1e6)), allow_nan=False)
    if kind == "string" and "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True).filter(lambda s: len(s) <= schema.get("maxLength", 128))
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=20)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return json_values


@st.composite
def spec_bodies(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """`base` with up to three top-level changes: a field dropped, set to a value its schema
    allows, set to arbitrary JSON, or an unknown field added."""
    body = copy.deepcopy(base)
    properties = SCHEMAS["ExperimentSpec"]["properties"]
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(sorted(properties) + ["colour"]))
        change = draw(st.sampled_from(["drop", "allowed", "allowed", "anything"]))
        if change == "drop":
            body.pop(name, None)
        elif change == "allowed" and name in properties:
            body[name] = draw(from_schema(properties[name]))
        else:
            body[name] = draw(json_values)
    return body


def follows_the_rules(body: dict[str, Any]) -> bool:
    try:
        spec_from_mapping(body)
    except SpecError:
        return False
    return True


@pytest.fixture(scope="module")
def api(kafka_bootstrap, tmp_path_factory):
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    ensure_topics(kafka_bootstrap, topic_specs(TopicNames(prefix), partitions=3))
    writer = create_token(kafka_bootstrap, prefix, "property tests", "write")["secret"]
    server = ApiServer(kafka_bootstrap, prefix, tmp_path_factory.mktemp("api"))
    server.wait_ready()
    status, _, _ = server.request("POST", "/v1/experiments", bandit_spec("base", ["a", "b", "c"]).model_dump(mode="json"),
                                  token=writer)
    assert status == 201
    yield server, writer
    server.stop()


def answered_as_documented(method: str, template: str, answer: tuple[int, Any, dict[str, str]]) -> int:
    status, body, headers = answer
    event(f"{status}")  # --hypothesis-show-statistics: how the examples split between accepted and refused
    assert status < 500, (method, template, status, body)
    response = OPENAPI["paths"][template][method.lower()]["responses"].get(str(status), {})
    content = OPENAPI["components"]["responses"][response["$ref"].rsplit("/", 1)[-1]]["content"] \
        if "$ref" in response else response.get("content", {})
    if "application/json" not in content and status < 300:  # CSV, parquet, the metrics' text
        assert headers["content-type"].split(";")[0] in content, (template, status, headers)
        return status
    check_answer(method, template, status, body)
    if status == 405:
        assert headers["allow"], body
    return status


@PROPERTY_RUN
@given(body=spec_bodies(bandit_spec("created", ["a", "b", "c"]).model_dump(mode="json")),
       fresh_id=st.booleans())
def test_creating_accepts_what_the_contract_allows_and_refuses_the_rest(api, body: dict[str, Any], fresh_id: bool) -> None:
    server, writer = api
    if fresh_id and isinstance(body.get("id"), str):
        body["id"] = f"p-{uuid.uuid4().hex[:10]}"
    status = answered_as_documented("POST", "/v1/experiments",
                                    server.request("POST", "/v1/experiments", body, token=writer))
    if SPEC_VALID.is_valid(body) and follows_the_rules(body):
        assert status in (201, 409), (status, body)
    else:
        assert status == 400, (status, body)


@PROPERTY_RUN
@given(body=spec_bodies(bandit_spec("base", ["a", "b", "c"]).model_dump(mode="json")),
       if_match=st.sampled_from(["current", "stale", "malformed", None]))
def test_replacing_accepts_what_the_contract_allows_and_refuses_the_rest(api, body: dict[str, Any],
                                                                       if_match: str | None) -> None:
    server, writer = api
    current = server.request("GET", "/v1/experiments/base", token=writer)[1]["spec_version"]
    header = {"current": f'"{current}"', "stale": f'"{current + 5}"', "malformed": "v1", None: None}[if_match]
    body.pop("spec_version", None)
    answer = server.request("PUT", "/v1/experiments/base", body, token=writer,
                            headers={} if header is None else {"if-match": header})
    status = answered_as_documented("PUT", ONE, answer)
    valid_body = (UPDATE_VALID.is_valid(body) and body.get("id", "base") == "base"
                  and follows_the_rules({**body, "id": "base"}))
    if if_match is None:
        assert status == 428
    elif if_match == "malformed" or not valid_body:
        assert status == 400, (status, body)
    else:
        assert status == (200 if if_match == "current" else 409), (status, body)
        if status == 200:  # keep the experiment usable by the next examples
            restore = bandit_spec("base", ["a", "b", "c"]).model_dump(mode="json")
            version = answer[1]["spec_version"]
            assert server.request("PUT", "/v1/experiments/base", {**restore, "spec_version": version}, token=writer,
                                  headers={"if-match": f'"{version}"'})[0] == 200


@PROPERTY_RUN
@given(action=st.sampled_from(["pause", "resume", "stop", "arms/b/reinstate", "arms/b/retire", "arms/a/retire",
                               "arms/zz/retire"]),
       body=st.none() | st.fixed_dictionaries({}, optional={"entity": from_schema({"type": "string", "minLength": 1})})
       | st.dictionaries(st.sampled_from(["entity", "arm", "force"]), json_values, max_size=2),
       if_match=st.sampled_from(["current", "stale", "malformed", None]))
def test_actions_accept_what_the_contract_allows_and_refuse_the_rest(api, action: str, body: dict[str, Any] | None,
                                                                   if_match: str | None) -> None:
    server, writer = api
    current = server.request("GET", "/v1/experiments/base", token=writer)[1]["spec_version"]
    header = {"current": f'"{current}"', "stale": f'"{current + 5}"', "malformed": "v1", None: None}[if_match]
    template = f"{ONE}/{action.replace('/b/', '/{arm}/').replace('/a/', '/{arm}/').replace('/zz/', '/{arm}/')}"
    status = answered_as_documented("POST", template, server.request(
        "POST", f"/v1/experiments/base/{action}", body, token=writer, headers={} if header is None else {"if-match": header}))
    request_body = OPENAPI["paths"][template]["post"]["requestBody"]["$ref"].rsplit("/", 1)[-1]
    schema = OPENAPI["components"]["requestBodies"][request_body]["content"]["application/json"]["schema"]
    if if_match == "malformed" or (body is not None and not contract_validator(schema).is_valid(body)):
        assert status == 400, (status, body)
    elif if_match == "stale":  # checked first: a change based on an old version is not looked at further
        assert status == 409
    elif action == "arms/zz/retire":
        assert status == 404
    elif action == "arms/a/retire":  # the default arm cannot be retired
        assert status == 409
    else:
        assert status == 200, (status, body)
    if action == "stop" and status == 200:  # keep the experiment running for the next examples
        assert server.request("POST", "/v1/experiments/base/resume", token=writer)[0] == 200


@PROPERTY_RUN
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
       path=st.sampled_from(sorted(OPENAPI["paths"])) | st.text(alphabet="/abcdefgv1x{}", max_size=24),
       token=st.booleans())
def test_no_method_and_path_gets_a_5xx_and_a_missing_method_gets_405_with_allow(api, method: str, path: str,
                                                                             token: bool) -> None:
    server, writer = api
    concrete = "/" + path.lstrip("/").replace("{experiment_id}", "base").replace("{arm}", "b")
    status, body, headers = server.request(method, concrete, token=writer if token else None)
    assert status < 500, (method, concrete, status, body)
    documented = OPENAPI["paths"].get(path, {})
    if path in OPENAPI["paths"] and method.lower() not in documented:
        assert status == 405 and set(headers["allow"].split(", ")) == {m.upper() for m in documented if m != "parameters"}
    if status in (404, 405):
        assert "error" in body


EVENT_PARAMETERS = {p["name"]: p["schema"] for p in OPENAPI["paths"][EVENTS]["get"]["parameters"] if "name" in p}


def as_query_value(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    """A value the parameter's schema allows, as a query string writes it."""
    if "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].rsplit("/", 1)[-1]]
    if schema.get("type") == "integer":
        return st.integers(schema["minimum"], schema["maximum"]).map(str)
    if "pattern" in schema and "maxLength" not in schema:
        return st.from_regex(schema["pattern"], fullmatch=True)
    return from_schema(schema).map(str)


def parameter_valid(name: str, value: str) -> bool:
    """What the document says of one query parameter's value (a moment must also exist)."""
    schema = EVENT_PARAMETERS[name]
    if "$ref" in schema:
        if not re.fullmatch(SCHEMAS["Moment"]["pattern"].strip("^$"), value):
            return False
        try:
            return value.isdigit() or datetime.fromisoformat(value) is not None
        except ValueError:
            return False
    if schema.get("type") == "integer":
        return bool(re.fullmatch("[0-9]+", value)) and schema["minimum"] <= int(value) <= schema["maximum"]
    return contract_validator(schema).is_valid(value)


@PROPERTY_RUN
@given(query=st.dictionaries(
    st.sampled_from(sorted(EVENT_PARAMETERS) + ["colour"]),
    st.one_of(st.text(alphabet="abcdefgsxyz0123456789-:TZ.%+_", max_size=14), st.just("")), max_size=4)
    .flatmap(lambda junk: st.fixed_dictionaries({
        # mostly what the document allows, else the junk drawn first
        name: st.sampled_from([True, True, True, False]).flatmap(
            lambda allowed, name=name, value=value: as_query_value(EVENT_PARAMETERS[name]) if allowed else st.just(value))
        if name in EVENT_PARAMETERS else st.just(value) for name, value in junk.items()})),
    token_of=st.sampled_from([None, "serves", "rewards", "dataset"]))
def test_events_accept_what_the_contract_allows_and_refuse_the_rest(api, query: dict[str, str],
                                                                   token_of: str | None) -> None:
    server, writer = api
    if token_of is not None:  # a page token as a page gave it (the document cannot say what else is one)
        query["page_token"] = Cursor(token_of, (0, *["x"] * (2 if token_of == "dataset" else 1))).token()
    status = answered_as_documented("GET", EVENTS, get(server, f"/v1/experiments/base/events?{urlencode(query)}",
                                                       writer))
    valid = (all(name in EVENT_PARAMETERS and parameter_valid(name, value) for name, value in query.items()
                 if name != "page_token")
             and ("page_token" not in query or token_of == query.get("kind", "serves")))
    assert status == (200 if valid else 400), (query, status)


def get(server: ApiServer, path: str, token: str) -> tuple[int, Any, dict[str, str]]:
    """(status, the body: JSON decoded, else bytes, headers with lower-case names) of a GET."""
    status, body, lower = exchange(server.url + path, headers={"authorization": f"Bearer {token}"})
    return status, json.loads(body) if lower["content-type"] == "application/json" else body, lower
