"""The control API's results route on the embedded ClickHouse engine: `GET
/v1/experiments/{id}/results?entity=` for an experiment with 1,000 entities, each with 48
weight tables of 4 arms in its history (48,000 tables, 192,000 rows) and a decision, over
real HTTP to `sluice api` (which hosts the sink, as it does on the embedded engine), next to
`GET /v1/experiments/{id}` on the same server in the same run (authenticated, no ClickHouse:
the floor of the HTTP stack and token check). The tables reach ClickHouse the way the
worker's do: on the weights topic, landed by the sink inside the API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np

from bench._figures import Figure
from bench._stack import kafka
from sluice.avro import SchemaSet, SingleObjectSerde
from sluice.config import project_root
from sluice.core.spec import spec_from_mapping
from sluice.experiments import ExperimentRegistry
from sluice.kafka import TopicNames, ensure_topics, topic_specs
from sluice.kafka.clients import entity_key
from sluice.kafka.io import AvroProducer
from sluice.local.kafka import free_loopback_ports, stop_pid
from sluice.tokens import TokenRegistry

SUITE = "api"
ARMS = ["baseline", "gbdt", "two-tower", "transformer"]
VERSIONS = 48


def _tables(names: TopicNames, serde: SingleObjectSerde, bootstrap: str, entities: list[str], now_ms: int) -> None:
    rng = np.random.default_rng(3)
    producer = AvroProducer(bootstrap, serde, **{"linger.ms": 20})
    for e in entities:
        rates = rng.uniform(0.02, 0.08, len(ARMS))
        for v in range(1, VERSIONS + 1):
            at = now_ms - (VERSIONS - v) * 3_600_000
            count = rng.integers(200, 2000, len(ARMS))
            weights = rng.dirichlet(np.ones(len(ARMS)))
            buckets = np.floor(weights * 10_000).astype(int)
            buckets[0] += 10_000 - buckets.sum()
            starts = np.concatenate([[0], np.cumsum(buckets)[:-1]])
            producer.send(names.weights, entity_key("ranking", e), "WeightTable", {
                "event_id": str(uuid.uuid4()), "experiment_id": "ranking", "entity": e, "version": v,
                "num_buckets": 10_000, "policy": "thompson", "reason": "bench",
                "arms": [{"arm": a, "weight": b / 10_000, "buckets": int(b),
                          "ranges": [{"start": int(s), "end": int(s + b)}] if b else []}
                         for a, b, s in zip(ARMS, buckets, starts)],
                "statistics": [{"arm": a, "serves": int(n), "count": int(n), "sum": float(round(n * r)),
                                "sum_squares": float(round(n * r))} for a, n, r in zip(ARMS, count, rates)],
                "window_start": at - 7 * 86_400_000, "window_end": at, "computed_at": at})
        producer.send(names.decisions, b"ranking", "Decision", {
            "event_id": str(uuid.uuid4()), "experiment_id": "ranking", "entity": e, "verdict": "CONTINUE",
            "winner": None, "rule": "minimum_data", "reason": "bench", "arm_actions": [], "statistics": [],
            "changes": None, "timestamp": now_ms})
    producer.flush(120)


def _get(url: str, token: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _latencies(urls: list[str], token: str) -> np.ndarray:
    out = []
    for url in urls:
        started = time.perf_counter()
        status, body = _get(url, token)
        out.append(time.perf_counter() - started)
        if status != 200:
            raise AssertionError(f"{url} answered {status}: {body}")
    return np.array(out) * 1000


def run(quick: bool) -> list[Figure]:
    n_entities, n_requests = (100, 100) if quick else (1_000, 400)
    entities = [f"adv-{i:04d}" for i in range(n_entities)]
    serde = SingleObjectSerde(SchemaSet.bundled())
    prefix = f"bench-api-{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    with kafka() as bootstrap, tempfile.TemporaryDirectory(prefix="sluice-bench-api-") as home:
        ensure_topics(bootstrap, topic_specs(names, partitions=6))
        with ExperimentRegistry(bootstrap, prefix, serde) as experiments:
            experiments.apply(spec_from_mapping({
                "id": "ranking", "status": "running", "salt": "s", "unit": "user_id", "entity": "advertiser",
                "parameters": [{"name": "model", "type": "string"}],
                "arms": [{"name": a, "values": {"model": a}} for a in ARMS], "default_arm": "baseline",
                "policy": {"name": "thompson", "params": {}}, "reward": {"type": "binary", "name": "click"}}))
        with TokenRegistry(bootstrap, prefix, serde) as tokens:
            _, token = tokens.create("bench", "read")
        now_ms = int(time.time() * 1000)
        _tables(names, serde, bootstrap, entities, now_ms)

        (port,) = free_loopback_ports(1)
        env = {k: v for k, v in os.environ.items() if k != "CLICKHOUSE_URL"}
        log = open(Path(home) / "api.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "sluice.cli", "api", "--prefix", prefix, "--port", str(port)],
                                env={**env, "KAFKA_BOOTSTRAP": bootstrap, "SLUICE_HOME": home}, cwd=project_root(),
                                stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}/v1/experiments/ranking"
        try:
            deadline = time.monotonic() + 600
            landed = False
            while time.monotonic() < deadline and not landed:  # every entity's newest table in ClickHouse
                time.sleep(1)
                try:
                    landed = all(_get(f"{base}/results?entity={e}", token)[1].get("weights", {}).get("version")
                                 == VERSIONS for e in entities[::max(1, n_entities // 10)] + entities[-1:])
                except OSError:
                    continue
            if not landed:
                raise AssertionError(f"the API's sink did not land the tables within 600 s; log {log.name}")
            rng = np.random.default_rng(9)
            picked = [entities[i] for i in rng.integers(0, n_entities, n_requests)]
            _latencies([base] * 20 + [f"{base}/results?entity={e}" for e in picked[:20]], token)  # warm up
            results = _latencies([f"{base}/results?entity={e}" for e in picked], token)
            floor = _latencies([base] * n_requests, token)
        finally:
            stop_pid(proc.pid, timeout_s=30, process=proc)
            log.close()
    p50, p95 = np.percentile(results, [50, 95])
    return [Figure(SUITE, f"GET results p95, {n_entities:,} entities x {VERSIONS} tables, embedded ClickHouse", float(p95),
                   "ms", "lower", "GET the experiment (same server, token, no ClickHouse) p95",
                   float(np.percentile(floor, 95)), goal=None if quick else 200.0,
                   note=f"{n_requests} sequential requests over HTTP to random entities; p50 {p50:.1f} ms, "
                        f"max {results.max():.1f} ms; the sink runs in the same process")]
