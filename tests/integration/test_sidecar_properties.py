"""Requests generated from the sidecar's OpenAPI document, against the real sidecar: no answer
is a 5xx or one the document does not list, every body matches the document, a request the
document calls valid is never refused as malformed, one it calls invalid always gets a 4xx,
and a method a path does not have gets 405 with `Allow`.

The oracle is the document (its schemas, integers written without a fraction, as it says)
plus what it says in words it cannot put in a schema: an unknown experiment or parameter is
404, and experiment `exp` runs per entity, so it needs a non-empty entity (400).
"""

from __future__ import annotations

import copy
import json
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sluice.config import project_root
from sluice.experiments import ExperimentRegistry
from sluice.kafka import TopicNames, ensure_topics, topic_specs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from http_support import exchange  # noqa: E402
from sidecar_support import Sidecar, publish_table  # noqa: E402
from stream_support import bandit_spec  # noqa: E402

pytestmark = pytest.mark.integration
DOCUMENT = yaml.safe_load((project_root() / "services" / "assignment" / "openapi.yaml").read_text())
COMPONENTS = DOCUMENT["components"]
TOKEN = "sidecar-secret-" + "p" * 24
PROPERTY_RUN = settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
_INTEGERS = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
_CONTRACT = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_INTEGERS)


def valid(schema: dict[str, Any], value: Any) -> bool:
    """Whether `value` is what `schema` (a piece of the document) allows, as the sidecar reads it."""
    return _CONTRACT({**schema, "components": COMPONENTS}).is_valid(value)


def resolved(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = COMPONENTS["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5)

# Realistic values for fields the oracle's rules look at: mostly the known ones.
HINTS: dict[str, st.SearchStrategy[Any]] = {
    "experiment": st.sampled_from(["exp", "exp", "exp", "nope"]),
    "entity": st.sampled_from(["site-1", "site-1", "site-2", "", None]),
}


def allowed(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values `schema` allows (mostly: the hints of known names are drawn too)."""
    schema = resolved(schema)
    kinds = schema.get("type")
    if isinstance(kinds, list):
        return st.one_of([allowed({**schema, "type": k}) for k in kinds])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if kinds == "null":
        return st.none()
    if kinds == "boolean":
        return st.booleans()
    if kinds == "integer":
        return st.integers(schema.get("minimum", -2**50), schema.get("maximum", 2**50))
    if kinds == "number":
        return st.floats(schema.get("minimum", -1e12), 1e12, allow_nan=False) | st.integers(
            int(schema.get("minimum", -10**6)), 10**6)
    if kinds == "string" and "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True)
    if kinds == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=16)
    if kinds == "array":
        return st.lists(allowed(schema["items"]), max_size=min(schema.get("maxItems", 4), 4))
    if kinds == "object" and "properties" in schema:
        properties = schema["properties"]

        def field(name: str) -> st.SearchStrategy[Any]:
            if name not in HINTS:
                return allowed(properties[name])
            # mostly a hint: one_of would pick each branch about as often, integers favour their ends
            return st.sampled_from([True, True, True, False]).flatmap(
                lambda hint: HINTS[name] if hint else allowed(properties[name]))

        required = set(schema.get("required", []))
        return st.fixed_dictionaries({n: field(n) for n in properties if n in required},
                                     optional={n: field(n) for n in properties if n not in required})
    if kinds == "object":
        return st.dictionaries(st.text(max_size=6), allowed(schema.get("additionalProperties", {})), max_size=3)
    return json_values


@st.composite
def bodies(draw: st.DrawFn, schema: dict[str, Any]) -> Any:
    """A body `schema` allows, then up to two changes: a field dropped, set to arbitrary JSON,
    or one the document does not name added; now and then no object at all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.lists(json_values, max_size=3))
    body = copy.deepcopy(draw(allowed(schema)))
    names = sorted(resolved(schema).get("properties", {})) + ["colour"]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        name = draw(st.sampled_from(names))
        if draw(st.booleans()):
            body.pop(name, None)
        else:
            body[name] = draw(json_values)
    return body


def request_body(path: str) -> dict[str, Any]:
    return DOCUMENT["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


@pytest.fixture(scope="module")
def sidecar(kafka_bootstrap, serde, tmp_path_factory):
    """A sidecar with a reward token, experiment `exp` (per entity; arms a, b, c set
    parameter `model`) and a table for entity site-1."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    ensure_topics(kafka_bootstrap, topic_specs(TopicNames(prefix), partitions=3))
    spec = bandit_spec("exp", ["a", "b", "c"])
    with ExperimentRegistry(kafka_bootstrap, prefix, serde) as registry:
        registry.apply(spec)
    publish_table(kafka_bootstrap, prefix, serde, spec, "site-1", [2000, 3000, 5000], version=1)
    home = tmp_path_factory.mktemp("sidecar")
    server = Sidecar(kafka_bootstrap, prefix, home / "state", home / "sidecar.log", env={"SLUICE_SIDECAR_TOKEN": TOKEN})
    server.wait_ready()
    yield server
    server.stop()


def call(server: Sidecar, method: str, path: str, body: Any = None, *,
         headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    """(status, JSON body or text, headers with lower-case names)."""
    data = None if body is None else json.dumps(body).encode()
    status, raw, lower = exchange(server.url + path, method, data,
                                  {"content-type": "application/json", **(headers or {})}, timeout_s=10)
    return status, json.loads(raw) if lower.get("content-type") == "application/json" else raw.decode(), lower


def answered_as_documented(template: str, method: str, answer: tuple[int, Any, dict[str, str]]) -> int:
    """The status, once checked: below 500, listed by the document, its body as documented."""
    status, body, headers = answer
    event(str(status))  # --hypothesis-show-statistics: how the examples split
    assert status < 500, (template, status, body)
    responses = DOCUMENT["paths"][template][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {template} answered {status}, which the document does not list"
    response = responses[str(status)]
    if "$ref" in response:
        response = COMPONENTS["responses"][response["$ref"].rsplit("/", 1)[-1]]
    content = response["content"]
    if "application/json" not in content:
        assert headers["content-type"].split(";")[0] in content
        return status
    assert valid(content["application/json"]["schema"], body), (template, status, body)
    return status


def assignable(item: dict[str, Any]) -> int:
    """What the sidecar answers a valid assignment request: 404 for an unknown experiment,
    400 without the entity `exp` needs, else 200."""
    if item["experiment"] != "exp":
        return 404
    return 200 if item.get("entity") else 400


@PROPERTY_RUN
@given(body=bodies(request_body("/v1/assign")))
def test_assign_accepts_what_the_document_allows_and_refuses_the_rest(sidecar, body: Any) -> None:
    status = answered_as_documented("/v1/assign", "POST", call(sidecar, "POST", "/v1/assign", body))
    schema = request_body("/v1/assign")
    assert status == (assignable(body) if valid(schema, body) else 400), (body, status)


@PROPERTY_RUN
@given(body=bodies(request_body("/v1/assign/batch")))
def test_a_batch_is_assigned_whole_or_refused_whole(sidecar, body: Any) -> None:
    answer = call(sidecar, "POST", "/v1/assign/batch", body)
    status = answered_as_documented("/v1/assign/batch", "POST", answer)
    if not valid(request_body("/v1/assign/batch"), body):
        assert status == 400, (body, status)
        return
    expected = next((s for s in map(assignable, body["requests"]) if s != 200), 200)
    assert status == expected, (body, status)
    if status == 200:
        assert [a["unit_id"] for a in answer[1]["assignments"]] == [r["unit_id"] for r in body["requests"]]


@PROPERTY_RUN
@given(name=st.sampled_from(["model", "model", "model", "colour"]) | st.text(max_size=12),
       body=bodies(request_body("/v1/parameters/{name}")))
def test_parameters_accept_what_the_document_allows_and_refuse_the_rest(sidecar, name: str, body: Any) -> None:
    answer = call(sidecar, "POST", f"/v1/parameters/{quote(name, safe='')}", body)
    if not name:  # /v1/parameters/ is no route
        assert answer[0] == 404
        return
    status = answered_as_documented("/v1/parameters/{name}", "POST", answer)
    if not valid(request_body("/v1/parameters/{name}"), body):
        assert status == 400, (name, body, status)
    elif name != "model" or body.get("experiment") not in (None, "exp"):
        assert status == 404, (name, body, status)
    else:
        assert status == (200 if body.get("entity") else 400), (name, body, status)
        if status == 200:
            assert answer[1]["value"] == f"m-{answer[1]['assignment']['arm']}"


@PROPERTY_RUN
@given(body=bodies(request_body("/v1/rewards")),
       authorization=st.sampled_from([f"Bearer {TOKEN}"] * 4 + [None, "Bearer wrong", f"Basic {TOKEN}"]))
def test_rewards_accept_what_the_document_allows_and_refuse_the_rest(sidecar, body: Any,
                                                                     authorization: str | None) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    status = answered_as_documented("/v1/rewards", "POST", call(sidecar, "POST", "/v1/rewards", body, headers=headers))
    if authorization != f"Bearer {TOKEN}":
        assert status == 401
    elif not valid(request_body("/v1/rewards"), body):
        assert status == 400, (body, status)
    else:
        assert status == (200 if body["experiment"] == "exp" else 404), (body, status)


@PROPERTY_RUN
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
       path=st.sampled_from(sorted(DOCUMENT["paths"])) | st.text(alphabet="/abcdehlmrstvyz1{}", max_size=20))
def test_no_method_and_path_gets_a_5xx_and_a_missing_method_gets_405_with_allow(sidecar, method: str,
                                                                             path: str) -> None:
    concrete = "/" + path.lstrip("/").replace("{name}", "model")
    status, body, headers = call(sidecar, method, concrete, {} if method in ("POST", "PUT", "PATCH") else None,
                                 headers={"authorization": f"Bearer {TOKEN}"})
    assert status < 500, (method, concrete, status, body)
    documented = DOCUMENT["paths"].get(path, {})
    if path in DOCUMENT["paths"]:
        methods = {m.upper() for m in documented if m != "parameters"}
        if method in methods:
            answered_as_documented(path, method, (status, body, headers))
        else:
            assert status == 405 and set(headers["allow"].split(", ")) == methods, (method, path, status)
    if status in (404, 405):
        assert valid({"$ref": "#/components/schemas/Error"}, body), body
