"""From MLflow's answers to Sluice's model versions: which tag or field gives what, what a
version without them gets (skipped, naming what is missing), how aliases set the status,
and how a webhook delivery's signature is checked."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import replace

import pytest

from sluice.mlflow.exceptions import WebhookRejected
from sluice.mlflow.mapping import Skipped, aliases_by_version, sluice_versions, status_change
from sluice.mlflow.webhook import parse_event, verify_signature

TAGS = {"sluice.entity": "site-1", "sluice.feature_set": "ranking@7", "sluice.data_start": "1000",
        "sluice.data_end": "2026-11-28T00:00:00+01:00", "sluice.rows": "1,200", "sluice.dataset_fingerprint": "sha256:ab"}


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in tags.items()]


def version(tags: dict[str, str], **fields) -> dict:
    return {"name": "gbdt", "version": "3", "source": "runs:/r1/model", "run_id": "r1", "status": "READY",
            "creation_timestamp": 5000, "tags": tag_list(tags), **fields}


RUN = {"info": {"run_id": "r1", "end_time": 4000},
       "data": {"metrics": [{"key": "auc", "value": 0.7}], "tags": []}}


def test_a_tagged_version_becomes_one_candidate_per_entity_with_its_runs_metrics() -> None:
    found = sluice_versions({"name": "gbdt"}, version({**TAGS, "sluice.entity": "site-1, site-2"}), RUN)

    assert not isinstance(found, Skipped)
    assert [(v.entity, v.model_type, v.version, v.status, v.source) for v in found] == [
        ("site-1", "gbdt", 3, "candidate", "mlflow"), ("site-2", "gbdt", 3, "candidate", "mlflow")]
    v = found[0]
    assert (v.trained_at_ms, v.data_start_ms, v.data_end_ms, v.rows) == (4000, 1000, 1_795_820_400_000, 1200)
    assert (v.feature_set, v.feature_set_version, v.artifact_uri, dict(v.metrics)) == (
        "ranking", "7", "runs:/r1/model", {"auc": 0.7})


def test_tags_come_from_the_version_then_the_run_then_the_registered_model() -> None:
    model = {"name": "gbdt", "tags": tag_list({"sluice.feature_set": "model-wide@1", "sluice.rows": "5"})}
    run = {**RUN, "data": {**RUN["data"], "tags": tag_list({"sluice.rows": "7", "sluice.entity": "from-run"})}}
    only_entity_missing = {k: v for k, v in TAGS.items() if k not in ("sluice.entity", "sluice.feature_set",
                                                                       "sluice.rows")}

    (v,) = sluice_versions(model, version(only_entity_missing), run)  # type: ignore[misc]

    assert (v.entity, v.feature_set, v.rows) == ("from-run", "model-wide", 7)


def test_the_runs_dataset_input_gives_rows_and_fingerprint_when_the_tags_do_not() -> None:
    run = {**RUN, "inputs": {"dataset_inputs": [
        {"tags": tag_list({"mlflow.data.context": "eval"}), "dataset": {"digest": "eval1", "profile": "{}"}},
        {"tags": tag_list({"mlflow.data.context": "training"}),
         "dataset": {"digest": "d41d8", "profile": json.dumps({"num_rows": 9000})}}]}}
    tags = {k: v for k, v in TAGS.items() if k not in ("sluice.rows", "sluice.dataset_fingerprint")}

    (v,) = sluice_versions({"name": "gbdt"}, version(tags), run)  # type: ignore[misc]

    assert (v.rows, v.dataset_fingerprint) == (9000, "mlflow-digest:d41d8")


@pytest.mark.parametrize(("given", "fields", "reason"), [
    ({}, {}, "missing tags sluice.entity, sluice.feature_set, sluice.data_start, sluice.data_end, sluice.rows"),
    ({**TAGS, "sluice.feature_set": "ranking"}, {}, "tag sluice.feature_set is 'ranking', not NAME@VERSION"),
    ({**TAGS, "sluice.data_end": "last week"}, {}, "tag sluice.data_end is 'last week', neither epoch"),
    ({**TAGS, "sluice.rows": "many"}, {}, "tag sluice.rows is 'many', not a whole number of rows"),
    ({**TAGS, "sluice.data_start": "9999999999999"}, {}, "data_start (9999999999999) is after data_end"),
    (TAGS, {"name": "My Model"}, "its registered model's name 'My Model' is not a Sluice model type"),
    (TAGS, {"status": "PENDING_REGISTRATION"}, "its status is PENDING_REGISTRATION (registered once READY)"),
])
def test_a_version_that_cannot_be_registered_is_skipped_saying_why(given, fields, reason) -> None:
    found = sluice_versions({"name": "gbdt"}, version(given, **fields), RUN)

    assert isinstance(found, Skipped)
    assert reason in found.reason


def test_a_serving_alias_makes_serving_and_only_an_alias_made_status_goes_back_when_it_moves() -> None:
    (v,) = sluice_versions({"name": "gbdt"}, version(TAGS), RUN)  # type: ignore[misc]
    aliases = aliases_by_version({"aliases": [{"alias": "champion", "version": "3"}, {"alias": "b", "version": "2"}]})

    assert aliases == {"3": ["champion"], "2": ["b"]}
    status, reason = status_change(v, aliases["3"]) or ("", "")
    assert (status, reason) == ("serving", "MLflow alias 'champion' points at it")
    by_alias = replace(v, status="serving", reason=reason)
    assert status_change(by_alias, aliases["3"]) is None
    assert (status_change(by_alias, []) or ("",))[0] == "candidate"
    assert status_change(replace(v, status="serving", reason="arm gbdt-v3 entered ranking"), []) is None
    assert status_change(replace(v, status="retired", reason="lost"), ["champion"]) is None


def signed(secret: str, delivery_id: str, timestamp: str, body: bytes) -> dict[str, str]:
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {"x-mlflow-signature": "v1," + base64.b64encode(digest).decode(), "x-mlflow-delivery-id": delivery_id,
            "x-mlflow-timestamp": timestamp}


def test_a_delivery_signed_with_the_secret_and_recent_is_mlflows() -> None:
    body = b'{"entity": "model_version", "action": "created", "data": {"name": "gbdt", "version": "3"}}'

    assert verify_signature("s3cret", signed("s3cret", "d-1", "1000", body), body, now_s=1100) == "d-1"
    event = parse_event(json.loads(body))
    assert (event.name, event.model, event.followed) == ("model_version.created", "gbdt", True)
    assert not parse_event({"entity": "registered_model", "action": "created", "data": {"name": "x"}}).followed


@pytest.mark.parametrize(("headers", "body", "message"), [
    (signed("other", "d-1", "1000", b"{}"), b"{}", "does not match"),
    (signed("s3cret", "d-1", "1000", b"{}"), b'{"a": 1}', "does not match"),
    ({**signed("s3cret", "d-1", "1000", b"{}"), "x-mlflow-delivery-id": "d-2"}, b"{}", "does not match"),
    (signed("s3cret", "d-1", "500", b"{}"), b"{}", "stale or replayed"),
    ({}, b"{}", "header x-mlflow-signature is required"),
    (signed("s3cret", "d-1", "soon", b"{}"), b"{}", "must be Unix seconds"),
])
def test_a_delivery_not_signed_with_the_secret_or_not_recent_is_rejected(headers, body, message) -> None:
    with pytest.raises(WebhookRejected, match=message):
        verify_signature("s3cret", headers, body, now_s=1100)
