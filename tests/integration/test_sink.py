"""The ClickHouse sink, killed with SIGKILL mid-stream and restarted, leaves every event in
ClickHouse exactly once; poison messages go to the dead-letter topic with the reason. When
ClickHouse decodes the Avro itself, the tables and dead letters are those of decoding in Python."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sluice.avro import SingleObjectSerde
from sluice.clickhouse import migrate
from sluice.kafka import TopicNames, ensure_topics, entity_key, topic_specs
from sluice.kafka.dlq import read_headers
from sluice.kafka.io import AvroProducer, read_topics
from streams.sink.sink import ClickHouseSink

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


def poison_serves(serde: SingleObjectSerde, now_ms: int) -> list[bytes]:
    """Messages the sink must dead-letter, one per way a serve can be bad."""
    marked = serde.encode("ServeEvent", serve(now_ms, 0) | {"unit_id": "XXXX"})
    at = marked.index(b"XXXX")
    return [
        b"not avro at all",
        b"\xc3\x01" + b"\x00" * 8 + b"x",  # unknown writer schema
        serde.encode("ServeEvent", serve(now_ms, 1)) + b"\x00",  # a byte after the record
        serde.encode("ServeEvent", serve(now_ms, 2))[:20],  # truncated
        marked[:at] + b"\xff\xfe\xfd\xfc" + marked[at + 4:],  # not UTF-8
        serde.encode("ServeEvent", serve(now_ms, 3) | {"bucket": -1}),  # valid Avro, refused by the table
    ]


def test_clickhouse_decoding_gives_the_rows_and_dead_letters_of_decoding_in_python(
        kafka_bootstrap: str, topic_prefix: str, serde: SingleObjectSerde, schemas: Any, clickhouse: Any, database: str) -> None:
    names = TopicNames(topic_prefix)
    ensure_topics(kafka_bootstrap, topic_specs(names, partitions=3))
    now_ms = int(time.time() * 1000)
    producer = AvroProducer(kafka_bootstrap, serde)
    reward_v1, reward_v2 = schemas.versions("RewardEvent")
    poison = poison_serves(serde, now_ms)
    rewards_v1 = []
    for i in range(3000):
        s = serve(now_ms, i) | {"entity": f"é{i % 7}", "context": {"page": "ß", "n": str(i)} if i % 3 else {}}
        key = entity_key("exp", s["entity"])
        producer.send(names.serves, key, "ServeEvent", s)
        if i == 1500:  # together, so that the batches around them are the only ones decoded in Python
            for p in poison:
                producer.send_raw(names.serves, key, p)
        reward = {"event_id": str(uuid.uuid4()), "serve_id": s["serve_id"], "experiment_id": "exp", "entity": s["entity"],
                  "name": "click", "value": float(i % 2), "timestamp": now_ms + i}
        if i % 2:
            producer.send_raw(names.rewards, key, serde.encode("RewardEvent", reward | {"latency_ms": 1.5 * i if i % 3 else None,
                                                                                        "error": i % 5 == 0}, version=reward_v2))
        else:
            rewards_v1.append((key, serde.encode("RewardEvent", reward, version=reward_v1)))  # without latency_ms and error
    for key, value in rewards_v1:  # after the newer ones, so most batches hold one writer schema
        producer.send_raw(names.rewards, key, value)
    producer.flush()

    tables = {}
    for decodes in (True, False):
        db = f"{database}_{'clickhouse' if decodes else 'python'}"
        migrate(clickhouse, database=db)
        sink = ClickHouseSink(kafka_bootstrap, clickhouse, serde, names, database=db, group_id=f"{topic_prefix}-{db}",
                              batch_max=500, clickhouse_decodes=decodes)
        runs: list[str] = []

        def broken() -> None:
            runs.append("broken")
            raise RuntimeError("a periodic job that fails")

        # Periodic jobs (the continuous offline evaluation) run between batches; one that fails does not stop the sink.
        sink.run(stop_when_idle_s=3, every=[(0.05, lambda: runs.append("ran")), (0.05, broken)])
        assert "ran" in runs and "broken" in runs
        assert sink.counts.rows_inserted == 3000 + 3000  # the poison messages are dead letters
        assert (sink.counts.rows_decoded_by_clickhouse > 3000) is decodes  # serves and rewards of both writers
        tables[decodes] = [clickhouse.query(f"SELECT * EXCEPT inserted_at FROM {db}.{t} ORDER BY _topic, _partition, _offset").result_rows
                           for t in ("serves", "rewards")]
    assert tables[True] == tables[False]

    dead = read_topics(kafka_bootstrap, [names.dlq], count=2 * len(poison), timeout_s=10)
    letters = Counter((m.value, read_headers(m.headers)["sluice.reason"]) for m in dead)
    assert set(letters.values()) == {2}  # each poison message once from each sink, with the same reason
    assert {value for value, _ in letters} == set(poison)
    assert sorted(reason.split(":")[0] for _, reason in letters) == sorted([
        "NotSingleObjectError", "UnknownFingerprintError", "CorruptBodyError", "TruncatedMessageError", "CorruptBodyError",
        "ClickHouse refused the rows"])
