"""The ClickHouse sink, killed with SIGKILL mid-stream and restarted, leaves every event in
ClickHouse exactly once; poison messages go to the dead-letter topic with the reason."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from sluice.avro import SingleObjectSerde
from sluice.kafka import TopicNames, ensure_topics, entity_key, topic_specs
from sluice.kafka.dlq import read_headers
from sluice.kafka.io import AvroProducer, read_topics

pytestmark = pytest.mark.integration


def serve(now_ms: int, i: int) -> dict:
    sid = str(uuid.uuid4())
    return {"event_id": sid, "serve_id": sid, "experiment_id": "exp", "entity": f"e{i % 4}", "unit_id": f"u{i}",
            "arm": "ab"[i % 2], "in_experiment": True, "propensity": 0.5, "weights_version": 1, "bucket": i % 10_000,
            "timestamp": now_ms + i, "context": {}}


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sluice.cli", *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_killed_sink_loses_nothing_and_duplicates_nothing(kafka_bootstrap: str, topic_prefix: str, serde: SingleObjectSerde, tmp_path: Path) -> None:
    names = TopicNames(topic_prefix)
    ensure_topics(kafka_bootstrap, topic_specs(names, partitions=3))
    env = {k: v for k, v in os.environ.items() if k != "CLICKHOUSE_URL"} | {
        "KAFKA_BOOTSTRAP": kafka_bootstrap, "SLUICE_HOME": str(tmp_path), "SLUICE_INSTANCE_ID": "sink-under-test"}
    now_ms = int(time.time() * 1000)
    n_serves, poison = 40_000, [b"not avro at all", b"\xc3\x01" + b"\x00" * 8 + b"x"]

    def produce() -> None:
        producer = AvroProducer(kafka_bootstrap, serde)
        for i in range(n_serves):
            s = serve(now_ms, i)
            producer.send(names.serves, entity_key("exp", s["entity"]), "ServeEvent", s)
            if i % 4 == 0:
                producer.send(names.rewards, entity_key("exp", s["entity"]), "RewardEvent",
                              {"event_id": str(uuid.uuid4()), "serve_id": s["serve_id"], "experiment_id": "exp", "entity": s["entity"],
                               "name": "click", "value": 1.0, "timestamp": now_ms + i + 10})
            if i in (1000, 30_000):
                for p in poison:
                    producer.send_raw(names.serves, entity_key("exp", "e0"), p)
            if i % 2000 == 0:
                producer.flush()
                time.sleep(0.05)  # a steady stream over a few seconds, so kills land mid-stream
        producer.flush()

    feeder = threading.Thread(target=produce)
    feeder.start()
    # First run: killed right after its first insert, before committing (the worst moment).
    first = run_cli(env | {"SLUICE_FAULT_KILL_AFTER_INSERTS": "1"}, "sink", "--prefix", topic_prefix, "--batch-max", "3000")
    assert first.returncode == -signal.SIGKILL, first.stderr
    rng = random.Random(7)
    for _ in range(3):  # then killed at random moments
        proc = subprocess.Popen([sys.executable, "-m", "sluice.cli", "sink", "--prefix", topic_prefix, "--batch-max", "3000"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 3.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    feeder.join()
    last = run_cli(env, "sink", "--prefix", topic_prefix, "--batch-max", "3000", "--stop-when-idle", "3")
    assert last.returncode == 0, last.stderr

    result = run_cli(env, "db", "query",
                     "SELECT (SELECT count() FROM sluice.serves), (SELECT uniqExact(event_id) FROM sluice.serves), "
                     "(SELECT count() FROM sluice.rewards), (SELECT uniqExact(event_id) FROM sluice.rewards)")
    assert result.returncode == 0, result.stderr
    serves, distinct_serves, rewards, distinct_rewards = map(int, result.stdout.split())
    assert (serves, distinct_serves) == (n_serves, n_serves)
    assert (rewards, distinct_rewards) == (n_serves // 4, n_serves // 4)

    dead = read_topics(kafka_bootstrap, [names.dlq], count=2 * len(poison), timeout_s=10)
    reasons = {read_headers(m.headers)["sluice.reason"].split(":")[0] for m in dead}
    assert reasons == {"NotSingleObjectError", "UnknownFingerprintError"}
    assert {m.value for m in dead} == set(poison)
    assert all(read_headers(m.headers)["sluice.source.topic"] == names.serves for m in dead)
