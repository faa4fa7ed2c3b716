"""The training loop on the real broker: the scheduler reads the registry and the worker's
tables and sends a job for the due and decaying models, not the fresh one; a trainer runs
it, a failed attempt is recorded and retried with backoff, and the new version enters its
entities' arms; a job that keeps failing is given up on the record, never lost."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from services.scheduler import TrainingScheduler
from services.trainer import Trainer
from sluice.core.scheduler import DAY_MS, scheduler_config
from sluice.core.spec import spec_from_mapping
from sluice.experiments import ExperimentRegistry
from sluice.kafka import TopicNames, ensure_topics, topic_specs
from sluice.kafka.io import AvroProducer, read_to_end
from sluice.local.kafka import free_loopback_ports
from sluice.models import ModelRegistry, ModelVersion, offer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stream_support import Traffic, WorkerProcess, bandit_spec, latest_tables  # noqa: E402

pytestmark = pytest.mark.integration
POLICIES = scheduler_config({"model_types": {"gbdt": {"every_days": 7, "reward_drop": 0.2}}})
SITES = ["site-1", "site-2", "site-3"]


def results(bootstrap: str, prefix: str, serde) -> list[dict]:
    return [serde.decode(m.value, "TrainingResult").record
            for m in read_to_end(bootstrap, [TopicNames(prefix).training_results])]


def test_due_and_decaying_models_are_retrained_together_and_enter_as_arms(kafka_bootstrap, topic_prefix, serde,
                                                                          tmp_path) -> None:
    names = TopicNames(topic_prefix)
    ensure_topics(kafka_bootstrap, topic_specs(names, partitions=2))
    data = bandit_spec("ranking", ["baseline", "other"], entities=SITES).model_dump(mode="json")
    data["models"] = {"parameter": "model", "entry": {"weight": 0.3, "until_observations": 100}}
    now = int(time.time() * 1000)
    with ExperimentRegistry(kafka_bootstrap, topic_prefix, serde) as experiments, \
            ModelRegistry(kafka_bootstrap, topic_prefix, serde) as registry:
        experiments.apply(spec_from_mapping(data))
        trained = {"site-1": now - 10 * DAY_MS, "site-2": now - DAY_MS, "site-3": now - DAY_MS}  # site-1 is old
        reference = {"site-1": 0.05, "site-2": 0.10, "site-3": 0.05}  # site-2 earned 10 % after training, 5 % now
        versions = [registry.register(ModelVersion(
            site, "gbdt", i + 1, trained[site], trained[site] - 28 * DAY_MS, trained[site], 50_000, f"sha256:{site}",
            "clicks", "3", f"s3://m/{site}/{i + 1}", {"reward_at_entry": reference[site]})) for i, site in enumerate(SITES)]
        for change in offer(experiments, versions):
            registry.set_status(change.entity, "gbdt", int(change.arm.rpartition("-v")[2]), "serving", change.text)

    traffic = Traffic()
    for i, site in enumerate(SITES):
        for j in range(400):
            arm = ["baseline", f"gbdt-v{i + 1}"][j % 2]
            sid = traffic.serve("ranking", site, arm, now - DAY_MS + j * 60_000)
            if j % 40 in (0, 1):  # exactly 5 % on each arm, so only site-2's version shows a drop
                traffic.reward("ranking", site, sid, 1.0, now - DAY_MS + j * 60_000 + 1000)
    (port,) = free_loopback_ports(1)
    worker = WorkerProcess(kafka_bootstrap, topic_prefix, tmp_path / "worker.log", metrics_port=port,
                           extra_args=("--instance-id", f"{topic_prefix}-w"), env={"SLUICE_TOPIC_PARTITIONS": "2"})
    try:
        traffic.produce(kafka_bootstrap, topic_prefix, serde)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tables = latest_tables(kafka_bootstrap, topic_prefix, serde)
            if all(sum(s["count"] for s in tables.get(("ranking", site), {"statistics": []})["statistics"]) == 400
                   for site in SITES):
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"the worker's tables never counted every serve: {sorted(tables)}")
    finally:
        worker.stop()

    scheduler = TrainingScheduler(kafka_bootstrap, topic_prefix, serde, POLICIES)
    (job,) = scheduler.round()
    assert [(m["entity"], m["reasons"]) for m in job["members"]] == [("site-2", ["reward_drop"]),
                                                                     ("site-1", ["every_days"])]
    assert (job["model_type"], job["feature_set"], job["feature_set_version"]) == ("gbdt", "clicks", "3")
    assert scheduler.round() == []  # its models are in an open job

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    trainer = Trainer(kafka_bootstrap, topic_prefix, serde, "training_support:flaky", workers=1, backoff_s=0.5)
    deadline = time.monotonic() + 90
    trainer.run(until=lambda: len(trainer.results) >= 2 or time.monotonic() > deadline)
    failed, succeeded = trainer.results
    assert (failed["status"], failed["attempt"], failed["error"]) == (
        "FAILED", 1, "ConnectionError: feature store unreachable")
    assert failed["retry_at"] >= failed["finished_at"] + 500
    assert (succeeded["status"], succeeded["attempt"]) == ("SUCCEEDED", 2)
    assert sorted(succeeded["versions"]) == ["site-1/gbdt/4", "site-2/gbdt/4"]
    assert [r["status"] for r in results(kafka_bootstrap, topic_prefix, serde)] == ["FAILED", "SUCCEEDED"]

    with ModelRegistry(kafka_bootstrap, topic_prefix, serde) as registry, \
            ExperimentRegistry(kafka_bootstrap, topic_prefix, serde) as experiments:
        assert registry.get("site-2", "gbdt").version == 4 and registry.get("site-2", "gbdt").status == "serving"
        assert registry.get("site-3", "gbdt").version == 3
        arm = next(a for a in experiments.get("ranking").arms if a.name == "gbdt-v4")
        assert sorted(arm.entities or ()) == ["site-1", "site-2"]
    assert scheduler.round() == []  # the new versions are fresh


def test_a_job_that_keeps_failing_is_given_up_on_the_record(kafka_bootstrap, topic_prefix, serde) -> None:
    names = TopicNames(topic_prefix)
    ensure_topics(kafka_bootstrap, topic_specs(names, partitions=1))
    job = {"job_id": str(uuid.uuid4()), "attempt": 1, "model_type": "gbdt", "feature_set": "clicks",
           "feature_set_version": "3", "window_days": 28.0,
           "members": [{"entity": "site-1", "serving_version": 1, "rows": 10, "reasons": ["every_days"],
                        "expected_gain": 1.0}],
           "expected_gain": 1.0, "created_at": 0, "not_before": 0, "previous_error": None}
    producer = AvroProducer(kafka_bootstrap, serde)
    producer.send(names.training_jobs, job["job_id"].encode(), "TrainingJob", job)
    producer.flush()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    trainer = Trainer(kafka_bootstrap, topic_prefix, serde, "training_support:broken", workers=1, max_attempts=2,
                      backoff_s=0.2)
    deadline = time.monotonic() + 60
    trainer.run(until=lambda: len(trainer.results) >= 2 or time.monotonic() > deadline)
    recorded = [(r["attempt"], r["status"], r["error"]) for r in results(kafka_bootstrap, topic_prefix, serde)]
    assert recorded == [(1, "FAILED", "ValueError: no training data for this window"),
                        (2, "GAVE_UP", "ValueError: no training data for this window")]
    attempts = [serde.decode(m.value, "TrainingJob").record for m in read_to_end(kafka_bootstrap, [names.training_jobs])]
    assert [(a["attempt"], a["previous_error"]) for a in attempts] == [
        (1, None), (2, "ValueError: no training data for this window")]


def test_the_demo_trainer_fits_a_model_per_member_from_the_logs(kafka_bootstrap, topic_prefix, serde, tmp_path,
                                                                 monkeypatch) -> None:
    from services.demo_trainer import train
    from sluice.core.serve_token import format_serve_id
    from sluice.kafka.clients import entity_key

    names = TopicNames(topic_prefix)
    ensure_topics(kafka_bootstrap, topic_specs(names, partitions=3))
    data = bandit_spec("ranking", ["baseline", "gbdt-v1"]).model_dump(mode="json")
    data["models"] = {"parameter": "model"}
    with ExperimentRegistry(kafka_bootstrap, topic_prefix, serde) as experiments:
        experiments.apply(spec_from_mapping(data))
    producer = AvroProducer(kafka_bootstrap, serde)
    now = int(time.time() * 1000)
    for site in ("site-1", "site-2", "elsewhere"):
        for i in range(600):
            device = "mobile" if i % 3 else "desktop"
            ts = now - DAY_MS + i * 60_000
            sid = format_serve_id(uuid.uuid4().hex[:24], ts, True, "gbdt-v1")
            producer.send(names.serves, entity_key("ranking", site), "ServeEvent", {
                "event_id": sid, "serve_id": sid, "experiment_id": "ranking", "entity": site, "unit_id": f"u{i}",
                "arm": "gbdt-v1", "in_experiment": True, "propensity": 0.5, "weights_version": 1, "bucket": 0,
                "timestamp": ts, "context": {"device": device}})
            if (device == "desktop" and i % 4 == 0) or i % 50 == 1:  # desktop converts far more
                producer.send(names.rewards, entity_key("ranking", site), "RewardEvent", {
                    "event_id": str(uuid.uuid4()), "serve_id": sid, "experiment_id": "ranking", "entity": site,
                    "name": "click", "value": 1.0, "timestamp": ts + 1000, "latency_ms": None, "error": None})
    producer.flush()
    monkeypatch.setenv("KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("SLUICE_TRAINING_PREFIX", topic_prefix)
    monkeypatch.setenv("SLUICE_MODELS_DIR", str(tmp_path))
    job = {"job_id": "j-1", "model_type": "gbdt", "window_days": 28.0, "attempt": 1,
           "members": [{"entity": "site-1"}, {"entity": "site-2"}]}
    result = train(job)
    assert [m["entity"] for m in result["models"]] == ["site-1", "site-2"]
    for m in result["models"]:
        # One binary feature explains the clicks: about 0.75 is the best AUC it allows.
        assert m["rows"] == 600 and m["metrics"]["auc"] > 0.65, m
        desktop, mobile, _intercept = np.load(Path(m["artifact_uri"].removeprefix("file://")))["coefficients"]
        assert desktop > mobile + 1.0  # 25 % against 2 % of clicks
    assert result["transform_ms"] > 0
