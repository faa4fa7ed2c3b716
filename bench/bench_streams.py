"""Stream worker: sustained events/s through one `sluice worker` (decode, validate, attribute,
aggregate, changelog, commit) next to a no-op Faust agent and a plain confluent-kafka
consumer reading the same topics in the same run; then freshness, the time from a reward
being produced to a weight table that includes it being on the weights topic."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from rich.progress import Progress

from bench._figures import Figure
from bench._stack import kafka
from sluice.avro import SchemaSet, SingleObjectSerde
from sluice.config import project_root
from sluice.core.serve_token import format_serve_id
from sluice.core.spec import spec_from_mapping
from sluice.experiments import ExperimentRegistry
from sluice.kafka import TopicNames, ensure_topics, entity_key, topic_specs
from sluice.kafka.clients import consumer_config
from sluice.kafka.io import AvroProducer
from sluice.kafka.security import PLAINTEXT
from sluice.local.kafka import free_loopback_ports, stop_pid

SUITE = "streams"
ARMS = {"a": 0.03, "b": 0.05, "c": 0.08, "d": 0.12}
ENTITIES = [f"site-{i}" for i in range(50)]
BATCH = 5_000


def _spec():
    return spec_from_mapping({
        "id": "bench", "status": "running", "salt": "bench", "unit": "user_id", "entity": "site",
        "parameters": [{"name": "model", "type": "string"}],
        "arms": [{"name": a, "values": {"model": a}} for a in ARMS], "default_arm": "a",
        "policy": {"name": "thompson", "params": {}}, "reward": {"type": "binary", "name": "click"},
        "guardrails": {"floor": 0.02},
    })


def _events(n_serves: int, start_ms: int, spacing_ms: float, serde, seed: int = 1) -> list[tuple[str, bytes, bytes]]:
    """Encoded serves and their rewards (each rewarded with its arm's rate), in time order."""
    rng = np.random.default_rng(seed)
    arms = list(ARMS)
    out = []
    for i in range(n_serves):
        entity = ENTITIES[i % len(ENTITIES)]
        arm = arms[int(rng.integers(len(arms)))]
        ts = start_ms + int(i * spacing_ms)
        sid = format_serve_id(uuid.uuid4().hex[:24], ts, True, arm)
        key = entity_key("bench", entity)
        out.append(("serves", key, serde.encode("ServeEvent", {
            "event_id": sid, "serve_id": sid, "experiment_id": "bench", "entity": entity, "unit_id": f"u{i}",
            "arm": arm, "in_experiment": True, "propensity": 0.25, "weights_version": 1, "bucket": i % 10_000,
            "timestamp": ts, "context": {}})))
        if rng.random() < ARMS[arm]:
            out.append(("rewards", key, serde.encode("RewardEvent", {
                "event_id": str(uuid.uuid4()), "serve_id": sid, "experiment_id": "bench", "entity": entity,
                "name": "click", "value": 1.0, "timestamp": ts + 1, "latency_ms": None, "error": None})))
    return out


def _produce(bootstrap: str, names: TopicNames, events: list[tuple[str, bytes, bytes]]) -> None:
    producer = AvroProducer(bootstrap, None, **{"linger.ms": 20, "batch.num.messages": 10_000})  # type: ignore[arg-type]
    topic = {"serves": names.serves, "rewards": names.rewards}
    for kind, key, value in events:
        producer.send_raw(topic[kind], key, value)
    producer.flush(120)


def _confluent_rate(bootstrap: str, topics: list[str], n: int) -> float:
    from confluent_kafka import Consumer

    consumer = Consumer(consumer_config(bootstrap, f"bench-raw-{uuid.uuid4().hex[:8]}", PLAINTEXT))
    consumer.subscribe(topics)
    count, first, first_batch = 0, 0.0, 0
    try:
        while count < n:
            msgs = consumer.consume(num_messages=10_000, timeout=1.0)
            if msgs and not first:
                first, first_batch = time.perf_counter(), len(msgs)
            count += len(msgs)
        return (count - first_batch) / (time.perf_counter() - first)
    finally:
        consumer.close()


def _faust_noop_rate(bootstrap: str, topics: list[str], n: int) -> float:
    out = subprocess.run([sys.executable, "-m", "bench._faust_noop", bootstrap, ",".join(topics), str(n), str(BATCH)],
                         capture_output=True, text=True, timeout=600, cwd=project_root())
    # Faust sends a worker's stdout through its logger, so the line may carry a log prefix.
    found = re.search(r'\{"count".*\}', out.stdout + out.stderr)
    if found is None:
        raise RuntimeError(f"no-op Faust agent failed: {out.stderr[-2000:]}")
    got = json.loads(found.group(0))
    return (got["count"] - got["first_batch"]) / (got["last"] - got["first"])


class _Worker:
    def __init__(self, bootstrap: str, prefix: str, log: Path) -> None:
        (self.port,) = free_loopback_ports(1)
        self._log = open(log, "wb")
        env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap, "SLUICE_HOME": str(log.parent / "home")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sluice.cli", "worker", "--prefix", prefix, "--metrics-port", str(self.port),
             "--batch-max", str(BATCH)], env=env, cwd=project_root(), stdout=self._log, stderr=subprocess.STDOUT)

    def sample(self, name: str) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        return {json.dumps(s.labels, sort_keys=True): s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == name}

    def processed(self) -> float:
        return sum(self.sample("sluice_stream_events_total").values())

    def stop(self) -> None:
        stop_pid(self.proc.pid, timeout_s=30, process=self.proc)
        self._log.close()


def _worker_rate(bootstrap: str, prefix: str, n: int, log: Path) -> float:
    worker = _Worker(bootstrap, prefix, log)
    try:
        first_t, first_n = 0.0, 0.0
        with Progress(transient=True) as progress:
            task = progress.add_task("worker: backlog", total=n)
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                if worker.proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {worker.proc.returncode}; see {log}")
                done = worker.processed()
                rejected = worker.sample("sluice_stream_rejected_total")
                if rejected:
                    raise RuntimeError(f"the worker dead-lettered benchmark input: {rejected}; see {log}")
                progress.update(task, completed=done)
                if done and not first_t:
                    first_t, first_n = time.perf_counter(), done
                if done >= n:
                    return (done - first_n) / (time.perf_counter() - first_t)
                time.sleep(0.25)  # each scrape costs the worker a little CPU
        raise RuntimeError(f"worker did not finish {n} events in time; see {log}")
    finally:
        worker.stop()


def _freshness(bootstrap: str, serde, rate: float, seconds: float, log: Path) -> tuple[list[float], float]:
    """Produce serves and rewards at `rate` events/s; returns, per 100 ms tick of rewards,
    the time until a weight table including them was on the topic, and the worker's own
    freshness histogram mean."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    names = TopicNames(f"bench-{uuid.uuid4().hex[:8]}")
    ensure_topics(bootstrap, topic_specs(names, partitions=6))
    with ExperimentRegistry(bootstrap, names.prefix, serde) as registry:
        registry.apply(_spec())
    worker = _Worker(bootstrap, names.prefix, log)
    published: list[tuple[float, str, float]] = []  # (time on topic, entity, total rewards in the table)
    stop = threading.Event()

    def follow() -> None:
        consumer = Consumer(consumer_config(bootstrap, f"bench-w-{uuid.uuid4().hex[:8]}", PLAINTEXT))
        meta = consumer.list_topics(names.weights, timeout=10)
        consumer.assign([TopicPartition(names.weights, p, OFFSET_BEGINNING) for p in meta.topics[names.weights].partitions])
        while not stop.is_set():
            for m in consumer.consume(num_messages=1000, timeout=0.1):
                if m.error() is None:
                    rec = serde.decode(m.value(), "WeightTable").record
                    published.append((m.timestamp()[1] / 1000, rec["entity"], sum(s["sum"] for s in rec["statistics"])))
        consumer.close()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        joined = time.monotonic() + 60
        while not worker.sample("sluice_stream_consumer_lag_messages"):  # joined, timers running
            if worker.proc.poll() is not None or time.monotonic() > joined:
                raise RuntimeError(f"worker did not start; see {log}")
            time.sleep(0.1)
        producer = AvroProducer(bootstrap, None, **{"linger.ms": 5})  # type: ignore[arg-type]
        ticks: list[tuple[float, dict[str, float]]] = []
        cumulative: dict[str, float] = {}
        per_tick = max(1, int(rate / 10))
        i = 0
        started = time.time()
        while time.time() - started < seconds:
            t0 = time.time()
            events = _events(per_tick, int(t0 * 1000), 0.0, serde, seed=i)
            for kind, key, value in events:
                producer.send_raw(names.serves if kind == "serves" else names.rewards, key, value)
                if kind == "rewards":
                    entity = key.split(b"\x1f")[1].decode()
                    cumulative[entity] = cumulative.get(entity, 0) + 1
            producer.flush(30)
            ticks.append((t0, dict(cumulative)))
            i += 1
            time.sleep(max(0.0, 0.1 - (time.time() - t0)))
        deadline = time.time() + 30
        while time.time() < deadline:  # until the last tick is published
            latest = {}
            for t, entity, total in published:
                latest[entity] = max(latest.get(entity, 0), total)
            if all(latest.get(e, 0) >= c for e, c in cumulative.items()):
                break
            time.sleep(0.2)
        hist_sum = sum(worker.sample("sluice_weights_freshness_seconds_sum").values())
        hist_count = sum(worker.sample("sluice_weights_freshness_seconds_count").values()) or 1
    finally:
        stop.set()
        follower.join(5)
        worker.stop()
    delays = []
    for t0, cum in ticks:
        for entity, total in cum.items():
            hit = next((t for t, e, s in published if e == entity and s >= total), None)
            if hit is not None:
                delays.append(hit - t0)
    return delays, hist_sum / hist_count


def run(quick: bool) -> list[Figure]:
    n_serves = 40_000 if quick else 200_000
    serde = SingleObjectSerde(SchemaSet.bundled())
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="sluice-bench-streams-") as tmp, kafka() as bootstrap:
        names = TopicNames(f"bench-{uuid.uuid4().hex[:8]}")
        ensure_topics(bootstrap, topic_specs(names, partitions=6))
        with ExperimentRegistry(bootstrap, names.prefix, serde) as registry:
            registry.apply(_spec())
        events = _events(n_serves, int(time.time() * 1000) - 3_600_000, 3_600_000 / n_serves, serde)
        _produce(bootstrap, names, events)
        n = len(events)
        topics = [names.serves, names.rewards]
        raw = _confluent_rate(bootstrap, topics, n)
        print(f"   confluent consume(): {raw:,.0f} events/s", file=sys.stderr)
        noop = _faust_noop_rate(bootstrap, topics, n)
        print(f"   no-op Faust agent: {noop:,.0f} events/s", file=sys.stderr)
        worker = _worker_rate(bootstrap, names.prefix, n, Path(tmp) / "worker.log")
        print(f"   sluice worker: {worker:,.0f} events/s", file=sys.stderr)
        note = f"{n:,} events ({n_serves:,} serves), {len(ENTITIES)} entities, batches of {BATCH:,}"
        figures.append(Figure(SUITE, "worker events/s (decode, attribute, aggregate, changelog, commit)", worker,
                              "events/s", "higher", "no-op Faust agent (take_events)", noop, goal=0.9 * noop, note=note))
        figures.append(Figure(SUITE, "plain confluent-kafka consume() of the same topics", raw, "events/s", "higher",
                              note="the transport's ceiling, for scale"))

        rate = 2_000 if quick else 5_000
        seconds = 10 if quick else 30
        delays, own = _freshness(bootstrap, serde, rate, seconds, Path(tmp) / "fresh.log")
        if delays:
            q = statistics.quantiles(delays, n=20)
            figures.append(Figure(SUITE, f"freshness p95: reward produced -> table on topic, {rate:,} events/s", q[-1],
                                  "s", "lower", "p50", statistics.median(delays), goal=2.0,
                                  note=f"{len(delays)} (tick, entity) samples; worker's own mean {own:.2f} s"))
    return figures
