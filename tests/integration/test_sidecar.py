"""The SDK and the HTTP sidecar against the real broker: the same answers as the core,
fresh tables within a second, every serve logged, bad requests refused by name, and
answers while the broker is down (spill, snapshot)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from sluice.client.sdk import SluiceClient
from sluice.config import project_root
from sluice.core.allocation import Allocation
from sluice.experiments import ExperimentRegistry
from sluice.kafka import TopicNames, ensure_topics, topic_specs
from sluice.kafka.io import read_to_end

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sidecar_support import Sidecar, publish_table  # noqa: E402
from stream_support import bandit_spec  # noqa: E402

pytestmark = pytest.mark.integration
OPENAPI = yaml.safe_load((project_root() / "services" / "assignment" / "openapi.yaml").read_text())


def check_schema(name: str, body: object) -> None:
    """Validate a response body against a component schema of openapi.yaml."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": OPENAPI["components"]}
    jsonschema.validate(body, schema)


@pytest.fixture
def setup(kafka_bootstrap, topic_prefix, serde, tmp_path):
    ensure_topics(kafka_bootstrap, topic_specs(TopicNames(topic_prefix), partitions=3))
    spec = bandit_spec("exp", ["a", "b", "c"])
    with ExperimentRegistry(kafka_bootstrap, topic_prefix, serde) as registry:
        registry.apply(spec)
    table = publish_table(kafka_bootstrap, topic_prefix, serde, spec, "site-1", [2000, 3000, 5000], version=1)
    sidecar = Sidecar(kafka_bootstrap, topic_prefix, tmp_path / "sidecar", tmp_path / "sidecar.log")
    yield kafka_bootstrap, topic_prefix, spec, table, sidecar
    sidecar.stop()


def test_sdk_sidecar_and_core_give_identical_assignments(setup, serde, tmp_path) -> None:
    bootstrap, prefix, spec, table, sidecar = setup
    sidecar.wait_ready()
    units = [f"user-{i}" for i in range(300)]
    status, body = sidecar.request("POST", "/v1/assign/batch", {"requests": [
        {"experiment": "exp", "unit_id": u, "entity": "site-1"} for u in units]})
    assert status == 200, body
    via_http = body["assignments"]
    for a in via_http:
        check_schema("Assignment", a)
    client = SluiceClient.connect(bootstrap, prefix=prefix, state_dir=tmp_path / "sdk", log_serves=False)
    try:
        via_sdk = [client.assign("exp", u, "site-1") for u in units]
    finally:
        client.close()
    arms, allocation = Allocation.from_arm_weights(table["arms"], table["num_buckets"])
    core = spec.assigner(allocation).assign_batch(units)
    expected = list(zip(core.arm_names().tolist(), core.bucket.tolist(), core.propensity.tolist()))
    assert [(a["arm"], a["bucket"], a["propensity"]) for a in via_http] == expected
    assert [(a.arm, a.bucket, a.propensity) for a in via_sdk] == expected
    assert {a["weights_version"] for a in via_http} == {1} and {a["source"] for a in via_http} == {"table"}
    assert {a.arm for a in via_sdk} == {"a", "b", "c"}
    assert via_http[0]["values"] == {"model": f"m-{via_http[0]['arm']}"}
    status, body = sidecar.request("POST", "/v1/parameters/model", {"unit_id": units[0], "entity": "site-1"})
    assert status == 200 and body["value"] == f"m-{expected[0][0]}"


def test_the_go_client_talks_to_the_sidecar(setup) -> None:
    from tests.unit.test_go_client import go_test

    sidecar = setup[4]
    sidecar.wait_ready()
    _, body = sidecar.request("POST", "/v1/assign", {"experiment": "exp", "unit_id": "user-7", "entity": "site-1"})
    run = go_test("-run", "TestSidecarAPI", env={"SLUICE_SIDECAR_URL": sidecar.url, "SLUICE_EXPECT_ARM": body["arm"]})
    assert run.returncode == 0 and "--- PASS: TestSidecarAPI" in run.stdout, run.stdout + run.stderr


def test_a_new_table_is_served_within_a_second(setup, serde) -> None:
    bootstrap, prefix, spec, _, sidecar = setup
    sidecar.wait_ready()
    published = time.monotonic()
    publish_table(bootstrap, prefix, serde, spec, "site-1", [0, 0, 10_000], version=2)
    while True:
        status, body = sidecar.request("POST", "/v1/assign", {"experiment": "exp", "unit_id": "u-1", "entity": "site-1"})
        if body["weights_version"] == 2:
            break
        assert time.monotonic() - published < 5, "the new table never arrived"
        time.sleep(0.01)
    took = time.monotonic() - published
    assert took < 1.0, f"new table served after {took:.2f} s"
    assert body["arm"] == "c" and body["propensity"] == 1.0


def test_every_assignment_is_logged_as_a_serve(setup, serde) -> None:
    bootstrap, prefix, _, _, sidecar = setup
    sidecar.wait_ready()
    ids = set()
    for i in range(50):
        status, body = sidecar.request("POST", "/v1/assign", {"experiment": "exp", "unit_id": f"u-{i}", "entity": "site-1"})
        ids.add(body["serve_id"])
    status, body = sidecar.request("POST", "/v1/rewards", {"serve_id": next(iter(ids)), "experiment": "exp",
                                                         "entity": "site-1", "value": 1})
    assert status == 200 and body["event_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        serves = [serde.decode(m.value, "ServeEvent").record for m in read_to_end(bootstrap, [f"{prefix}.serves.v1"])]
        if len(serves) >= 50:
            break
        time.sleep(0.3)
    assert {s["serve_id"] for s in serves} == ids and len(serves) == 50
    rewards = read_to_end(bootstrap, [f"{prefix}.rewards.v1"])
    assert len(rewards) == 1


def test_with_a_reward_token_configured_rewards_without_it_are_refused_and_not_logged(setup, tmp_path) -> None:
    from tests.unit.test_go_client import go_test

    bootstrap, prefix, _, _, _ = setup
    token = "sidecar-secret-" + "x" * 24
    guarded = Sidecar(bootstrap, prefix, tmp_path / "guarded", tmp_path / "guarded.log", env={"SLUICE_SIDECAR_TOKEN": token})
    try:
        guarded.wait_ready()
        status, served = guarded.request("POST", "/v1/assign", {"experiment": "exp", "unit_id": "u-1", "entity": "site-1"})
        assert status == 200, served  # assignments need no token: they move no weights
        reward = {"serve_id": served["serve_id"], "experiment": "exp", "entity": "site-1", "value": 1}
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {token}"},
                        {"authorization": f"Bearer {token}x"}):
            status, body = guarded.request("POST", "/v1/rewards", reward, headers=headers)
            check_schema("Error", body)
            assert status == 401 and "SLUICE_SIDECAR_TOKEN" in body["error"], (headers, body)
        status, body = guarded.request("POST", "/v1/rewards", reward, headers={"authorization": f"Bearer {token}"})
        assert status == 200 and body["event_id"], body
        run = go_test("-run", "TestSidecarAPI", env={"SLUICE_SIDECAR_URL": guarded.url, "SLUICE_SIDECAR_TOKEN": token})
        assert run.returncode == 0 and "--- PASS: TestSidecarAPI" in run.stdout, run.stdout + run.stderr
    finally:
        guarded.stop()
    deadline = time.monotonic() + 30
    while len(rewards := read_to_end(bootstrap, [f"{prefix}.rewards.v1"])) < 2:
        assert time.monotonic() < deadline, f"{len(rewards)} rewards arrived, expected 2"
        time.sleep(0.2)
    assert len(rewards) == 2  # the one posted with the token and the Go client's, none of the refused


@pytest.mark.parametrize("path, raw, status, words", [
    ("/v1/assign", b"{not json", 400, "not JSON"),
    ("/v1/assign", b'{"experiment": "exp", "entity": "site-1"}', 400, "unit_id"),
    ("/v1/assign", b'{"experiment": "exp", "unit_id": 5, "entity": "site-1"}', 400, "unit_id' must be str"),
    ("/v1/assign", b'{"experiment": "nope", "unit_id": "u"}', 404, "unknown experiment"),
    ("/v1/assign", b'{"experiment": "exp", "unit_id": "u"}', 400, "entity"),
    ("/v1/assign", b'[1, 2]', 400, "JSON object"),
    ("/v1/assign/batch", b'{"requests": [' + b",".join([b'{"experiment":"exp","unit_id":"u","entity":"s"}'] * 1001) + b"]}",
     413, "at most 1000"),
    ("/v1/assign/batch", b'{"requests": [{"experiment": "exp"}]}', 400, "requests[0].unit_id"),
    ("/v1/rewards", b'{"serve_id": "s", "experiment": "exp", "value": "high"}', 400, "value' must be"),
    ("/v1/parameters/unknown.param", b'{"unit_id": "u"}', 404, "unknown.param"),
    ("/v2/nothing", b"{}", 404, "not a route"),
])
def test_bad_requests_get_a_4xx_naming_the_problem(setup, path, raw, status, words) -> None:
    sidecar = setup[4]
    sidecar.wait_ready()
    got, body = sidecar.request("POST", path, raw=raw)
    assert got == status, body
    check_schema("Error", body)
    assert words in body["error"], body
    assert sidecar.request("GET", "/healthz") == (200, {"status": "ok"})  # still serving


def test_with_the_broker_down_every_request_is_answered_and_no_serve_is_lost(own_broker, serde, tmp_path) -> None:
    bootstrap, prefix = own_broker.bootstrap, "down"
    ensure_topics(bootstrap, topic_specs(TopicNames(prefix), partitions=3))
    spec = bandit_spec("exp", ["a", "b", "c"])
    with ExperimentRegistry(bootstrap, prefix, serde) as registry:
        registry.apply(spec)
    publish_table(bootstrap, prefix, serde, spec, "site-1", [5000, 5000, 0], version=3)
    state = tmp_path / "state"
    sidecar = Sidecar(bootstrap, prefix, state, tmp_path / "sidecar.log", ready_timeout=3)
    ids: list[str] = []

    def assign_some(n: int, source: str) -> None:
        for i in range(n):
            started = time.monotonic()
            status, body = sidecar.request("POST", "/v1/assign", {"experiment": "exp", "unit_id": f"u-{len(ids)}",
                                                                 "entity": "site-1"})
            assert status == 200 and body["source"] == source and body["weights_version"] == 3, body
            assert time.monotonic() - started < 0.5, "an assignment waited on Kafka"
            ids.append(body["serve_id"])

    try:
        sidecar.wait_ready()
        assign_some(20, "table")
        snapshot = state / f"{prefix}.snapshot.json"
        deadline = time.monotonic() + 30  # the snapshot follows a change within a second; the serves are batched
        while not (snapshot.exists() and '"version":3' in snapshot.read_text().replace(" ", "")
                   and len(read_to_end(bootstrap, [f"{prefix}.serves.v1"])) == 20):
            assert time.monotonic() < deadline, "no snapshot of the table, or not every serve delivered, within 30 s"
            time.sleep(0.1)
        own_broker.stop()
        assign_some(20, "table")
        sidecar.stop()  # restarted while the broker is down: serves from the snapshot
        assert (state / "serves.spill").stat().st_size > 0, "the serves logged while the broker was down were not spilled"
        sidecar = Sidecar(bootstrap, prefix, state, tmp_path / "sidecar2.log", ready_timeout=2)
        assert sidecar.wait_ready()["live"] is False
        assign_some(20, "snapshot")
        own_broker.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = [serde.decode(m.value, "ServeEvent").record["serve_id"]
                   for m in read_to_end(bootstrap, [f"{prefix}.serves.v1"])]
            if len(got) >= len(ids):
                break
            time.sleep(0.5)
    finally:
        sidecar.stop()
    assert sorted(got) == sorted(ids), f"{len(got)} serves on the topic for {len(ids)} assignments"
