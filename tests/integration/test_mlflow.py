"""The MLflow bridge against a real MLflow tracking server (installed into a virtualenv of
its own under the cache folder, `tests/mlflow_support.py`) and the real broker: versions
announced by MLflow, by polling or by its signed webhooks, are registered in Sluice once,
and their status follows MLflow's aliases."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sluice.kafka import TopicNames, ensure_topics, topic_specs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from api_support import ApiServer, check_answer  # noqa: E402
from mlflow_support import MlflowServer, mlflow_venv  # noqa: E402

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec-test-" + uuid.uuid4().hex
WEBHOOK = "/v1/integrations/mlflow/webhook"
TAGS = {"sluice.feature_set": "ranking-features@7", "sluice.data_start": "2026-11-01T00:00:00Z",
        "sluice.data_end": "2026-11-28T00:00:00Z", "sluice.rows": "120000",
        "sluice.dataset_fingerprint": "sha256:9f2c"}


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """The server, started here and awaited at its first use (each test asks for it before
    the broker, so both start at the same time)."""
    server = MlflowServer(mlflow_venv(), tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefix(kafka_bootstrap: str, topic_prefix: str) -> str:
    ensure_topics(kafka_bootstrap, topic_specs(TopicNames(topic_prefix), partitions=2))
    return topic_prefix


def a_model(mlflow: MlflowServer) -> str:
    """A registered model of the test's own (the model type of its versions in Sluice)."""
    name = f"gbdt-{uuid.uuid4().hex[:8]}"
    mlflow.call("POST", "registered-models/create", {"name": name})
    return name


def a_version(mlflow: MlflowServer, name: str, tags: dict[str, str]) -> dict[str, Any]:
    """A version of `name` from a finished run with offline metrics, with `tags`."""
    run = mlflow.logged_run({"auc": 0.71, "logloss": 0.32})
    return mlflow.call("POST", "model-versions/create", {
        "name": name, "source": f"runs:/{run['info']['run_id']}/model", "run_id": run["info"]["run_id"],
        "tags": [{"key": k, "value": v} for k, v in tags.items()]})["model_version"]


def sluice(bootstrap: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sluice.cli", "models", *args, "--prefix", prefix],
                          capture_output=True, text=True, env={**os.environ, "KAFKA_BOOTSTRAP": bootstrap}, cwd=ROOT,
                          timeout=120)


def sync(bootstrap: str, prefix: str, mlflow: MlflowServer, name: str) -> dict[str, Any]:
    run = sluice(bootstrap, prefix, "mlflow-sync", "--tracking-uri", mlflow.url, "--once", "--model", name, "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def listed(bootstrap: str, prefix: str, name: str) -> list[dict[str, Any]]:
    run = sluice(bootstrap, prefix, "list", "--model-type", name, "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_a_tagged_version_is_registered_once_with_its_run(mlflow, kafka_bootstrap, prefix) -> None:
    name = a_model(mlflow)
    created = a_version(mlflow, name, {**TAGS, "sluice.entity": "site-1,site-2"})

    first = sync(kafka_bootstrap, prefix, mlflow, name)

    assert sorted(v["entity"] for v in first["registered"]) == ["site-1", "site-2"]
    versions = listed(kafka_bootstrap, prefix, name)
    assert [(v["entity"], v["version"], v["status"], v["source"]) for v in versions] == [
        ("site-1", 1, "candidate", "mlflow"), ("site-2", 1, "candidate", "mlflow")]
    v = versions[0]
    assert v["metrics"] == {"auc": 0.71, "logloss": 0.32}
    assert (v["feature_set"], v["feature_set_version"], v["rows"]) == ("ranking-features", "7", 120000)
    assert v["artifact_uri"] == created["source"] and v["dataset_fingerprint"] == "sha256:9f2c"
    assert (v["data_start_ms"], v["data_end_ms"]) == (1_793_491_200_000, 1_795_824_000_000)
    assert 0 < v["trained_at_ms"] <= created["creation_timestamp"]  # the run ended before the version was made

    again = sync(kafka_bootstrap, prefix, mlflow, name)
    assert (again["registered"], again["status_changes"], again["skipped"]) == ([], [], [])


def test_a_version_without_the_tags_is_skipped_naming_them_and_the_rest_go_through(mlflow, kafka_bootstrap,
                                                                                   prefix) -> None:
    name = a_model(mlflow)
    a_version(mlflow, name, {"sluice.entity": "site-1", "sluice.rows": "10"})
    a_version(mlflow, name, {**TAGS, "sluice.entity": "site-1"})

    run = sluice(kafka_bootstrap, prefix, "mlflow-sync", "--tracking-uri", mlflow.url, "--once", "--model", name)

    assert run.returncode == 0, run.stderr
    assert (f"MLflow model {name!r} version 1 skipped: missing tags sluice.feature_set, sluice.data_start, "
            "sluice.data_end, sluice.dataset_fingerprint") in run.stderr
    assert [v["version"] for v in listed(kafka_bootstrap, prefix, name)] == [2]


def test_the_serving_alias_makes_a_version_serving_and_moving_it_away_a_candidate_again(mlflow, kafka_bootstrap,
                                                                                        prefix) -> None:
    name = a_model(mlflow)
    runs = [a_version(mlflow, name, {**TAGS, "sluice.entity": "site-1"})["run_id"] for _ in range(2)]
    sync(kafka_bootstrap, prefix, mlflow, name)

    mlflow.call("POST", "registered-models/alias", {"name": name, "alias": "champion", "version": "2"})
    changed = sync(kafka_bootstrap, prefix, mlflow, name)

    assert [(v["version"], v["status"]) for v in changed["status_changes"]] == [(2, "serving")]
    assert [(v["version"], v["status"], v["reason"]) for v in listed(kafka_bootstrap, prefix, name)] == [
        (1, "candidate", f"registered from MLflow model {name!r} version 1 (run {runs[0]})"),
        (2, "serving", "MLflow alias 'champion' points at it")]

    mlflow.call("POST", "registered-models/alias", {"name": name, "alias": "champion", "version": "1"})
    moved = sync(kafka_bootstrap, prefix, mlflow, name)

    assert [(v["version"], v["status"]) for v in moved["status_changes"]] == [(1, "serving"), (2, "candidate")]


@pytest.fixture
def api(kafka_bootstrap: str, prefix: str, mlflow: MlflowServer, tmp_path: Path) -> Iterator[ApiServer]:
    os.environ.update(SLUICE_MLFLOW_WEBHOOK_SECRET=SECRET, SLUICE_MLFLOW_TRACKING_URI=mlflow.url)
    try:
        server = ApiServer(kafka_bootstrap, prefix, tmp_path, "--no-results")
    finally:
        for key in ("SLUICE_MLFLOW_WEBHOOK_SECRET", "SLUICE_MLFLOW_TRACKING_URI"):
            os.environ.pop(key)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def wait_for_versions(bootstrap: str, prefix: str, name: str, count: int, timeout_s: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    found: list[dict] = []
    while time.monotonic() < deadline:
        found = listed(bootstrap, prefix, name)
        if len(found) >= count:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{name} has {len(found)} versions in Sluice, not {count}, after {timeout_s} s")


def test_a_webhook_delivery_from_mlflow_registers_the_version_it_announces(mlflow, kafka_bootstrap, prefix,
                                                                          api) -> None:
    name = a_model(mlflow)
    mlflow.call("POST", "webhooks", {
        "name": f"sluice-{name}", "url": api.url + WEBHOOK, "secret": SECRET,
        "events": [{"entity": "MODEL_VERSION", "action": "CREATED"},
                   {"entity": "MODEL_VERSION_ALIAS", "action": "CREATED"}]})

    a_version(mlflow, name, {**TAGS, "sluice.entity": "site-3"})
    (registered,) = wait_for_versions(kafka_bootstrap, prefix, name, 1)

    assert (registered["entity"], registered["version"], registered["source"]) == ("site-3", 1, "mlflow")
    mlflow.call("POST", "registered-models/alias", {"name": name, "alias": "serving", "version": "1"})
    deadline = time.monotonic() + 60
    while listed(kafka_bootstrap, prefix, name)[0]["status"] != "serving":
        assert time.monotonic() < deadline, "the alias's webhook never made the version serving"
        time.sleep(0.5)


def signed(body: bytes, secret: str, delivery_id: str, timestamp: int) -> dict[str, str]:
    signature = base64.b64encode(hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body,
                                          hashlib.sha256).digest()).decode()
    return {"x-mlflow-signature": f"v1,{signature}", "x-mlflow-delivery-id": delivery_id,
            "x-mlflow-timestamp": str(timestamp)}


def test_a_delivery_without_the_right_signature_is_refused_and_registers_nothing(mlflow, kafka_bootstrap, prefix,
                                                                                api) -> None:
    name = a_model(mlflow)
    a_version(mlflow, name, {**TAGS, "sluice.entity": "site-4"})
    body = json.dumps({"entity": "model_version", "action": "created", "timestamp": "2026-11-30T10:00:00Z",
                       "data": {"name": name, "version": "1"}}).encode()
    now = int(time.time())

    for headers in (signed(body, "not-the-secret", "d-1", now), signed(body, SECRET, "d-1", now - 3600), {},
                    {**signed(body, SECRET, "d-1", now), "x-mlflow-delivery-id": "d-2"}):
        status, answer, _ = api.request("POST", WEBHOOK, raw=body, headers=headers)
        assert status == 401, (headers, answer)
        check_answer("POST", WEBHOOK, status, answer)
    assert listed(kafka_bootstrap, prefix, name) == []

    status, answer, _ = api.request("POST", WEBHOOK, raw=body, headers=signed(body, SECRET, "d-3", now))
    assert status == 200, answer
    check_answer("POST", WEBHOOK, status, answer)
    assert [v["entity"] for v in answer["registered"]] == ["site-4"]
