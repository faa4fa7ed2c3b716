"""The control API over real HTTP on the real broker: the experiment lifecycle with
optimistic concurrency, every change on the experiments topic and, with who made it and the
spec before and after, in ClickHouse's audit_log; refused credentials change nothing; every
answer matches openapi.yaml."""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from sluice.clickhouse import migrate
from sluice.kafka import TopicNames, ensure_topics, topic_specs
from sluice.kafka.io import read_to_end
from sluice.tokens import TokenRegistry
from streams.sink.sink import ClickHouseSink

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from api_support import ApiServer, check_answer, create_token, sluice_cli  # noqa: E402
from stream_support import bandit_spec  # noqa: E402

pytestmark = pytest.mark.integration
ONE = "/v1/experiments/{experiment_id}"


@pytest.fixture(scope="module")
def api_module(kafka_bootstrap, serde, tmp_path_factory):
    """One API for the module (starting one takes seconds); each test uses experiments of its own."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    ensure_topics(kafka_bootstrap, topic_specs(TopicNames(prefix), partitions=3))
    writer = create_token(kafka_bootstrap, prefix, "release bot", "write")
    with TokenRegistry(kafka_bootstrap, prefix, serde) as registry:
        reader = registry.create("dashboard", "read")[1]
    # Without results: the audit test below runs a sink of its own on the same topics.
    server = ApiServer(kafka_bootstrap, prefix, tmp_path_factory.mktemp("api"), "--no-results")
    server.wait_ready()
    yield server, writer, reader, prefix
    server.stop()


@pytest.fixture
def api(api_module):
    """The module's API, its write and read tokens, and an experiment id no other test uses."""
    server, writer, reader, _ = api_module
    return server, writer, reader, f"exp-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def topic_prefix(api_module) -> str:
    return api_module[3]


def published(bootstrap: str, prefix: str, serde: Any, experiment_id: str) -> list[dict[str, Any]]:
    """Every ExperimentSpec record of `experiment_id` on the topic, oldest first."""
    records = [serde.decode(m.value, "ExperimentSpec").record for m in read_to_end(bootstrap, [TopicNames(prefix).experiments])]
    return [r for r in records if r["experiment_id"] == experiment_id]


def audit_events(bootstrap: str, prefix: str, serde: Any, experiment_id: str) -> list[dict[str, Any]]:
    """The audit events of `experiment_id`, oldest first."""
    events = [serde.decode(m.value, "AuditEvent").record for m in read_to_end(bootstrap, [TopicNames(prefix).audit])]
    return [e for e in events if e["experiment_id"] == experiment_id]


def test_create_read_update_and_pause_with_optimistic_concurrency(api, kafka_bootstrap, topic_prefix, serde) -> None:
    server, writer, reader, exp = api
    spec = bandit_spec(exp, ["a", "b", "c"]).model_dump(mode="json")

    status, body, headers = server.request("POST", "/v1/experiments", spec, token=writer["secret"])
    check_answer("POST", "/v1/experiments", status, body)
    assert status == 201 and body["spec_version"] == 1 and headers["etag"] == '"1"'
    assert headers["location"] == f"/v1/experiments/{exp}"

    status, body, headers = server.request("GET", f"/v1/experiments/{exp}", token=reader)
    check_answer("GET", ONE, status, body)
    assert status == 200, body
    assert (body["id"], body["status"], headers["etag"]) == (exp, "running", '"1"')

    changed = {**body, "description": "more traffic to c"}
    status, body, headers = server.request("PUT", f"/v1/experiments/{exp}", changed, token=writer["secret"],
                                           headers={"if-match": '"1"'})
    check_answer("PUT", ONE, status, body)
    assert (status, body["spec_version"], body["description"], headers["etag"]) == (200, 2, "more traffic to c", '"2"')

    # A client that read version 1 and writes again is refused, naming the current version.
    stale = {**changed, "description": "a change based on version 1"}
    status, body, _ = server.request("PUT", f"/v1/experiments/{exp}", stale, token=writer["secret"], headers={"if-match": '"1"'})
    check_answer("PUT", ONE, status, body)
    assert status == 409 and body["current_version"] == 2 and "spec_version 2, not 1" in body["error"]
    status, body, _ = server.request("PUT", f"/v1/experiments/{exp}", stale, token=writer["secret"])
    check_answer("PUT", ONE, status, body)
    assert status == 428 and "If-Match" in body["error"]

    status, body, headers = server.request("POST", f"/v1/experiments/{exp}/pause", token=writer["secret"],
                                           headers={"if-match": '"2"'})
    check_answer("POST", f"{ONE}/pause", status, body)
    assert (status, body["status"], body["spec_version"]) == (200, "paused", 3)

    on_topic = published(kafka_bootstrap, topic_prefix, serde, exp)
    assert [(r["spec_version"], r["status"]) for r in on_topic] == [(1, "RUNNING"), (2, "RUNNING"), (3, "PAUSED")]
    assert json.loads(on_topic[-1]["spec_json"])["description"] == "more traffic to c"

    status, body, _ = server.request("GET", "/v1/experiments", token=reader)
    check_answer("GET", "/v1/experiments", status, body)
    assert [(e["status"], e["spec_version"]) for e in body["experiments"] if e["id"] == exp] == [("paused", 3)]

    events = audit_events(kafka_bootstrap, topic_prefix, serde, exp)
    assert [(e["action"], e["token_id"], e["token_name"]) for e in events] == [
        ("create", writer["token_id"], "release bot"), ("update", writer["token_id"], "release bot"),
        ("pause", writer["token_id"], "release bot")]
    assert events[0]["before_json"] is None
    assert [json.loads(e["after_json"])["spec_version"] for e in events] == [1, 2, 3]
    assert json.loads(events[2]["before_json"])["status"] == "running" and json.loads(events[2]["after_json"])["status"] == "paused"


def test_a_second_api_instance_refuses_a_change_based_on_what_the_first_replaced(api, api_module, kafka_bootstrap,
                                                                                 tmp_path) -> None:
    """Every instance checks a change against the experiments topic read to its end, so a
    client that read version 1 from one instance cannot overwrite, through another, the
    version 2 the first one published a moment ago."""
    server, writer, _, exp = api
    other = ApiServer(kafka_bootstrap, api_module[3], tmp_path, "--no-results")
    try:
        other.wait_ready()
        spec = bandit_spec(exp, ["a", "b"]).model_dump(mode="json")
        assert server.request("POST", "/v1/experiments", spec, token=writer["secret"])[0] == 201
        status, body, _ = server.request("PUT", f"/v1/experiments/{exp}", {**spec, "description": "first"},
                                         token=writer["secret"], headers={"if-match": '"1"'})
        assert (status, body["spec_version"]) == (200, 2)
        status, body, _ = other.request("PUT", f"/v1/experiments/{exp}", {**spec, "description": "second"},
                                        token=writer["secret"], headers={"if-match": '"1"'})
        check_answer("PUT", ONE, status, body)
        assert status == 409 and body["current_version"] == 2, body
        status, body, _ = other.request("POST", f"/v1/experiments/{exp}/pause", token=writer["secret"],
                                        headers={"if-match": '"2"'})
        assert (status, body["spec_version"], body["description"]) == (200, 3, "first")
    finally:
        other.stop()


def test_missing_unknown_and_underscoped_tokens_change_nothing(api, kafka_bootstrap, topic_prefix, serde) -> None:
    server, writer, reader, exp = api
    spec = bandit_spec(exp, ["a", "b"]).model_dump(mode="json")
    assert server.request("POST", "/v1/experiments", spec, token=writer["secret"])[0] == 201
    before = published(kafka_bootstrap, topic_prefix, serde, exp)
    forged = writer["secret"][:-4] + "AAAA"
    attempts = [
        ("POST", f"/v1/experiments/{exp}/pause", f"{ONE}/pause", None, 401, "Authorization: Bearer"),
        ("POST", f"/v1/experiments/{exp}/pause", f"{ONE}/pause", "not-a-token", 401, "looks like"),
        ("POST", f"/v1/experiments/{exp}/stop", f"{ONE}/stop", forged, 401, "unknown token"),
        ("PUT", f"/v1/experiments/{exp}", ONE, forged, 401, "unknown token"),
        ("GET", f"/v1/experiments/{exp}", ONE, None, 401, "Authorization: Bearer"),
        ("POST", f"/v1/experiments/{exp}/pause", f"{ONE}/pause", reader, 403, "scope read; this route needs write"),
        ("POST", "/v1/experiments", "/v1/experiments", reader, 403, "needs write"),
    ]
    for method, path, template, token, status, words in attempts:
        got, body, headers = server.request(method, path, {**spec, "description": "sneaky"}
                                            if method == "PUT" or path == "/v1/experiments" else None,
                                            token=token, headers={"if-match": '"1"'})
        check_answer(method, template, got, body)
        assert got == status and words in body["error"], (method, path, body)
        if status == 401:
            assert headers["www-authenticate"].startswith("Bearer")
    assert published(kafka_bootstrap, topic_prefix, serde, exp) == before
    assert [e["action"] for e in audit_events(kafka_bootstrap, topic_prefix, serde, exp)] == ["create"]


@pytest.mark.parametrize(("method", "path", "template", "raw", "status", "words"), [
    ("DELETE", "/v1/experiments/EXP", ONE, None, 405, "allowed: GET, PUT"),
    ("GET", "/v1/experiments/EXP/pause", f"{ONE}/pause", None, 405, "allowed: POST"),
    ("POST", "/v1/experiments", "/v1/experiments", b"{not json", 400, "not JSON"),
    ("POST", "/v1/experiments", "/v1/experiments", b"[1]", 400, "JSON object"),
    ("POST", "/v1/experiments", "/v1/experiments", b" " * (256 * 1024 + 1), 413, "larger than"),
    ("POST", "/v1/experiments/nope/pause", f"{ONE}/pause", None, 404, "'nope' is not on"),
    ("POST", "/v1/experiments/EXP/arms/zz/retire", f"{ONE}/arms/{{arm}}/retire", None, 404, "no arm 'zz'"),
    ("POST", "/v1/experiments/EXP/arms/a/retire", f"{ONE}/arms/{{arm}}/retire", None, 409, "default arm 'a' cannot be retired"),
    ("POST", "/v1/experiments/EXP/arms/b/retire", f"{ONE}/arms/{{arm}}/retire", b'{"entity": 3}', 400, "field 'entity'"),
    ("POST", "/v1/experiments/EXP/pause", f"{ONE}/pause", b'{"force": true}', 400, "field 'force' is not known"),
    ("GET", "/v1/experiments/EXP/results", f"{ONE}/results", None, 503, "results are off"),
    ("GET", "/v1/experiments/EXP/events?kind=rewards", f"{ONE}/events", None, 503, "results are off"),
])
def test_bad_requests_get_a_4xx_naming_the_problem(api, method, path, template, raw, status, words) -> None:
    server, writer, _, exp = api
    spec = bandit_spec(exp, ["a", "b"]).model_dump(mode="json")
    assert server.request("POST", "/v1/experiments", spec, token=writer["secret"])[0] == 201
    got, body, headers = server.request(method, path.replace("EXP", exp), raw=raw, token=writer["secret"])
    assert got == status and words in body["error"], body
    if status == 405:
        assert headers["allow"] == body["error"].split("allowed: ")[1]
    else:
        check_answer(method, template, got, body)
    assert server.request("GET", f"/v1/experiments/{exp}", token=writer["secret"])[1]["spec_version"] == 1


def test_an_invalid_spec_is_refused_with_every_problem_as_apply_refuses_it(api) -> None:
    server, writer, _, exp = api
    spec = bandit_spec(exp, ["a", "b"]).model_dump(mode="json")
    bad = {**spec, "default_arm": "z", "traffic_fraction": 2}
    status, body, _ = server.request("POST", "/v1/experiments", bad, token=writer["secret"])
    check_answer("POST", "/v1/experiments", status, body)
    assert status == 400 and any(p.startswith("traffic_fraction") for p in body["problems"])
    status, body, _ = server.request("POST", "/v1/experiments", {**spec, "default_arm": "z"}, token=writer["secret"])
    assert status == 400 and any("default_arm: 'z' is not an arm" in p for p in body["problems"])
    assert server.request("GET", f"/v1/experiments/{exp}", token=writer["secret"])[0] == 404


def test_retire_and_reinstate_an_arm_for_one_entity(api, kafka_bootstrap, topic_prefix, serde) -> None:
    server, writer, _, exp = api
    spec = bandit_spec(exp, ["a", "b", "c"]).model_dump(mode="json")
    assert server.request("POST", "/v1/experiments", spec, token=writer["secret"])[0] == 201
    status, body, _ = server.request("POST", f"/v1/experiments/{exp}/arms/b/retire", {"entity": "site-1"}, token=writer["secret"])
    check_answer("POST", f"{ONE}/arms/{{arm}}/retire", status, body)
    assert status == 200 and [(r["arm"], r["entity"]) for r in body["health"]["retired"]] == [("b", "site-1")]
    status, body, _ = server.request("POST", f"/v1/experiments/{exp}/arms/b/reinstate", token=writer["secret"])
    check_answer("POST", f"{ONE}/arms/{{arm}}/reinstate", status, body)
    assert status == 200 and [(r["arm"], r["entity"]) for r in body["health"]["reinstated"]] == [("b", None)]
    events = audit_events(kafka_bootstrap, topic_prefix, serde, exp)
    assert [(e["action"], e["arm"], e["entity"]) for e in events] == [
        ("create", None, None), ("retire", "b", "site-1"), ("reinstate", "b", None)]


def test_a_revoked_token_is_refused_and_listing_never_shows_a_secret(api, kafka_bootstrap, topic_prefix) -> None:
    server, _, _, _ = api
    doomed = create_token(kafka_bootstrap, topic_prefix, f"intern {uuid.uuid4().hex[:6]}", "admin")
    deadline = time.monotonic() + 5
    while server.request("GET", "/v1/experiments", token=doomed["secret"])[0] == 401:  # every instance follows the topic
        assert time.monotonic() < deadline, "the new token was not accepted within 5 s"
        time.sleep(0.05)
    revoked = sluice_cli(kafka_bootstrap, "tokens", "revoke", doomed["token_id"], "--prefix", topic_prefix, "--json")
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["revoked_at_ms"] is not None, revoked.stderr
    deadline = time.monotonic() + 5
    while (status := server.request("GET", "/v1/experiments", token=doomed["secret"]))[0] == 200:
        assert time.monotonic() < deadline, "the revoked token was still accepted after 5 s"
        time.sleep(0.05)
    assert status[0] == 401 and f"token {doomed['token_id']} was revoked" in status[1]["error"]
    listed = sluice_cli(kafka_bootstrap, "tokens", "list", "--prefix", topic_prefix, "--json")
    tokens = {t["token_id"]: t for t in json.loads(listed.stdout)}
    assert tokens[doomed["token_id"]]["revoked_at_ms"] is not None and tokens[doomed["token_id"]]["scope"] == "admin"
    assert doomed["secret"] not in listed.stdout and "sha256" not in listed.stdout
    assert {"release bot", "dashboard", doomed["name"]} <= {t["name"] for t in tokens.values()}


def test_every_change_lands_in_the_audit_log_in_clickhouse(api, kafka_bootstrap, topic_prefix, serde, clickhouse,
                                                           database) -> None:
    server, writer, _, exp = api
    spec = bandit_spec(exp, ["a", "b"]).model_dump(mode="json")
    request_id = f"req-{uuid.uuid4().hex}"
    status, _, headers = server.request("POST", "/v1/experiments", spec, token=writer["secret"],
                                        headers={"x-request-id": request_id})
    assert status == 201 and headers["x-request-id"] == request_id
    assert server.request("POST", f"/v1/experiments/{exp}/stop", token=writer["secret"])[0] == 200

    migrate(clickhouse, database=database)
    sink = ClickHouseSink(kafka_bootstrap, clickhouse, serde, TopicNames(topic_prefix), database=database)
    deadline = time.monotonic() + 60

    def landed() -> int:
        return clickhouse.query(f"SELECT count() FROM {database}.audit_log WHERE experiment_id = {{e:String}}",
                                parameters={"e": exp}).result_rows[0][0]

    sink.run(until=lambda: landed() >= 2 or time.monotonic() > deadline)
    rows = clickhouse.query(
        f"SELECT action, token_id, token_name, request_id, before_json, after_json FROM {database}.audit_log "
        "WHERE experiment_id = {e:String} ORDER BY timestamp, action", parameters={"e": exp}).result_rows
    assert [(r[0], r[1], r[2]) for r in rows] == [("create", writer["token_id"], "release bot"),
                                                 ("stop", writer["token_id"], "release bot")]
    assert rows[0][3] == request_id and rows[0][4] is None
    assert json.loads(rows[1][4])["status"] == "running" and json.loads(rows[1][5])["status"] == "stopped"


def test_the_model_registry_is_read_through_the_api(api, kafka_bootstrap, topic_prefix, serde) -> None:
    from sluice.models import ModelRegistry, ModelVersion

    server, _, reader, _ = api
    entity = f"adv-{uuid.uuid4().hex[:6]}"
    with ModelRegistry(kafka_bootstrap, topic_prefix, serde) as registry:
        for version in (1, 2):
            registry.register(ModelVersion(entity, "gbdt", version, 1000 * version, 0, 500, 10_000, "sha256:ab",
                                           "clicks", "3", f"s3://m/{version}", {"auc": 0.7}))
        registry.set_status(entity, "gbdt", 1, "retired", "replaced by gbdt-v2")
    deadline = time.monotonic() + 10
    while True:  # the API follows the models topic
        status, body, _ = server.request("GET", f"/v1/models?entity={entity}", token=reader)
        check_answer("GET", "/v1/models", status, body)
        if [(m["version"], m["status"]) for m in body["models"]] == [(1, "retired"), (2, "candidate")]:
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.1)
    assert body["models"][0]["reason"] == "replaced by gbdt-v2" and body["models"][1]["arm"] == "gbdt-v2"
    status, body, _ = server.request("GET", f"/v1/models?entity={entity}&model_type=two-tower", token=reader)
    assert (status, body) == (200, {"models": []})
    status, _, _ = server.request("GET", "/v1/models")
    assert status == 401


def test_whoami_names_the_token_and_the_console_is_served_without_one(api) -> None:
    import http.client

    server, writer, reader, _ = api
    status, body, _ = server.request("GET", "/v1/whoami", token=writer["secret"])
    check_answer("GET", "/v1/whoami", status, body)
    assert body == {"token_id": writer["token_id"], "name": "release bot", "scope": "write", "may_change": True}
    status, body, _ = server.request("GET", "/v1/whoami", token=reader)
    assert (status, body["name"], body["scope"], body["may_change"]) == (200, "dashboard", "read", False)
    assert server.request("GET", "/v1/whoami")[0] == 401

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/")
    answer = connection.getresponse()
    assert (answer.status, answer.getheader("location")) == (302, "/console/")
    connection.close()
    status, page, headers = server.request("GET", "/console/")
    assert status == 200 and headers["content-type"].startswith("text/html") and "/console/console.js" in page
    assert "default-src 'self'" in headers["content-security-policy"]  # the token's page runs only its own script
    status, script, headers = server.request("GET", "/console/console.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and "/v1/whoami" in script
    for path in ("/console/nope.js", "/console/..", "/console/.hidden.css", "/console/__init__.py"):
        status, body, _ = server.request("GET", path)
        check_answer("GET", "/console/{file}", status, body)
        assert status == 404 and "not a file of the console" in body["error"], (path, body)
