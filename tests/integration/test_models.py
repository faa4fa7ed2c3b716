"""The model registry on the real broker and ClickHouse engine: a registered version becomes
an arm of its entity only and takes its entry weight in the worker's tables; retired, it
leaves that entity's table; the registry survives a restart and its history lands in
ClickHouse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from sluice.clickhouse import migrate
from sluice.core.spec import spec_from_mapping
from sluice.experiments import ExperimentRegistry
from sluice.kafka import TopicNames, ensure_topics, topic_specs
from sluice.local.kafka import free_loopback_ports
from sluice.models import ModelRegistry
from streams.sink.sink import ClickHouseSink

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stream_support import DAY_MS, Traffic, WorkerProcess, bandit_spec, latest_tables  # noqa: E402

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def ranking_spec():
    data = bandit_spec("ranking", ["baseline", "gbdt-v1"]).model_dump(mode="json")
    data["models"] = {"parameter": "model", "model_types": ["gbdt"], "entry": {"weight": 0.05, "until_observations": 500}}
    return spec_from_mapping(data)


def cli(bootstrap: str, prefix: str, *args: str) -> dict:
    run = subprocess.run([sys.executable, "-m", "sluice.cli", "models", *args, "--prefix", prefix, "--json"],
                         capture_output=True, text=True, env={**os.environ, "KAFKA_BOOTSTRAP": bootstrap}, cwd=ROOT,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def wait_for_table(bootstrap: str, prefix: str, serde, entity: str, ok) -> dict:
    deadline = time.monotonic() + 30
    table = None
    while time.monotonic() < deadline:
        table = latest_tables(bootstrap, prefix, serde).get(("ranking", entity))
        if table is not None and ok(table):
            return table
        time.sleep(0.3)
    raise AssertionError(f"{entity}'s table never became what was awaited: {table and table['arms']}")


def arms(table: dict) -> dict[str, float]:
    return {a["arm"]: a["weight"] for a in table["arms"]}


def test_a_registered_version_enters_for_its_entity_and_leaves_when_retired(kafka_bootstrap, topic_prefix, serde,
                                                                            clickhouse, tmp_path) -> None:
    names = TopicNames(topic_prefix)
    ensure_topics(kafka_bootstrap, topic_specs(names, partitions=2))
    with ExperimentRegistry(kafka_bootstrap, topic_prefix, serde) as experiments:
        experiments.apply(ranking_spec())
    (port,) = free_loopback_ports(1)
    worker = WorkerProcess(kafka_bootstrap, topic_prefix, tmp_path / "worker.log", metrics_port=port,
                           extra_args=("--instance-id", f"{topic_prefix}-w"), env={"SLUICE_TOPIC_PARTITIONS": "2"})
    try:
        traffic = Traffic()
        traffic.bandit("ranking", ["site-1", "site-2"], {"baseline": 0.05, "gbdt-v1": 0.06}, 300,
                       int(time.time() * 1000) - DAY_MS, np.random.default_rng(3))
        traffic.produce(kafka_bootstrap, topic_prefix, serde)
        wait_for_table(kafka_bootstrap, topic_prefix, serde, "site-2", lambda t: True)
        before = wait_for_table(kafka_bootstrap, topic_prefix, serde, "site-1", lambda t: True)

        day = "2026-11-20T00:00:00"
        registered = cli(kafka_bootstrap, topic_prefix, "register", "--entity", "site-1", "--model-type", "gbdt",
                         "--artifact-uri", "s3://models/gbdt/site-1/2", "--feature-set", "clicks@3", "--rows", "120000",
                         "--data-start", day, "--data-end", "2026-11-27T00:00:00", "--fingerprint", "sha256:feed",
                         "--metric", "auc=0.74")
        (version,) = registered["versions"]
        assert (version["version"], version["status"], version["arm"]) == (2, "serving", "gbdt-v2")
        assert registered["entered"] == ["gbdt-v2 enters ranking for 'site-1' at 0.05 until 500 observations"]

        entered = wait_for_table(kafka_bootstrap, topic_prefix, serde, "site-1", lambda t: "gbdt-v2" in arms(t))
        assert arms(entered)["gbdt-v2"] == pytest.approx(0.05) and "gbdt-v2 enters at 0.05" in entered["reason"]
        assert entered["version"] > before["version"]
        site2 = latest_tables(kafka_bootstrap, topic_prefix, serde)[("ranking", "site-2")]
        assert "gbdt-v2" not in arms(site2)

        retired = cli(kafka_bootstrap, topic_prefix, "retire", "site-1", "gbdt", "2", "--reason", "lost to gbdt-v1")
        assert retired["version"]["status"] == "retired" and retired["left"] == ["gbdt-v2 leaves ranking for 'site-1'"]
        wait_for_table(kafka_bootstrap, topic_prefix, serde, "site-1", lambda t: arms(t).get("gbdt-v2") == 0)
        with ExperimentRegistry(kafka_bootstrap, topic_prefix, serde) as experiments:
            assert experiments.get("ranking").arm_names == ("baseline", "gbdt-v1")
    finally:
        worker.stop()

    with ModelRegistry(kafka_bootstrap, topic_prefix, serde) as reopened:  # the registry is the topic
        kept = reopened.get("site-1", "gbdt")
        assert (kept.version, kept.status, kept.reason, kept.metrics) == (2, "retired", "lost to gbdt-v1", {"auc": 0.74})
        assert reopened.next_version("gbdt") == 3

    database = f"t_{uuid.uuid4().hex[:12]}"
    migrate(clickhouse, database=database)
    sink = ClickHouseSink(kafka_bootstrap, clickhouse, serde, names, database=database, group_id=f"{topic_prefix}-sink")
    history = f"SELECT status, reason FROM {database}.model_versions WHERE entity = 'site-1' ORDER BY updated_at"
    deadline = time.monotonic() + 60
    sink.run(until=lambda: len(clickhouse.query(history).result_rows) >= 3 or time.monotonic() > deadline)
    assert [r[0] for r in clickhouse.query(history).result_rows] == ["candidate", "serving", "retired"]


def test_a_version_a_decision_retired_is_retired_in_the_registry_and_leaves_its_entity(
        kafka_bootstrap, topic_prefix, serde) -> None:
    from services.lifecycle import LifecycleFollower
    from sluice.kafka.io import AvroProducer
    from sluice.models import ModelVersion, offer

    names = TopicNames(topic_prefix)
    ensure_topics(kafka_bootstrap, topic_specs(names, partitions=1))
    with ExperimentRegistry(kafka_bootstrap, topic_prefix, serde) as experiments, \
            ModelRegistry(kafka_bootstrap, topic_prefix, serde) as registry:
        experiments.apply(ranking_spec())
        v = registry.register(ModelVersion("site-1", "gbdt", 5, 0, 0, 0, 10, "sha256:aa", "clicks", "3", "s3://m/5"))
        assert [c.text for c in offer(experiments, [v])] == [
            "gbdt-v5 enters ranking for 'site-1' at 0.05 until 500 observations"]
        registry.set_status("site-1", "gbdt", 5, "serving", "entered ranking")
    decision = {"event_id": str(uuid.uuid4()), "experiment_id": "ranking", "entity": "site-1", "verdict": "KILL",
                "winner": None, "rule": "futility", "reason": "gbdt-v5 cannot win",
                "arm_actions": [{"arm": "gbdt-v5", "action": "STOP", "reason": "worse than baseline"}],
                "statistics": [], "changes": "retired gbdt-v5 for 'site-1' (worse than baseline)",
                "timestamp": int(time.time() * 1000)}
    producer = AvroProducer(kafka_bootstrap, serde)
    producer.send(names.decisions, b"ranking", "Decision", decision)
    producer.flush()

    follower = LifecycleFollower(kafka_bootstrap, topic_prefix, serde)
    deadline = time.monotonic() + 60
    follower.run(until=lambda: bool(follower.handled) or time.monotonic() > deadline)
    assert list(follower.handled) == ["retired site-1/gbdt v5: its arm gbdt-v5 was retired by a KILL decision (futility)",
                                "gbdt-v5 leaves ranking for 'site-1'"]
    with ModelRegistry(kafka_bootstrap, topic_prefix, serde) as registry, \
            ExperimentRegistry(kafka_bootstrap, topic_prefix, serde) as experiments:
        assert registry.get("site-1", "gbdt", 5).status == "retired"
        assert "gbdt-v5" not in experiments.get("ranking").arm_names
