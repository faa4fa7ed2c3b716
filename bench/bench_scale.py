"""Scale: one entity with N live serves (1,000,000; 200,000 with --quick), 3 % rewarded.

Measures the worker on that backlog: events/s, resident memory growth per live serve, bytes
of local state on disk per live serve, the largest message it wrote, and how long a
restart after SIGKILL takes to be back (local store + changelog since its checkpoint), and
from the changelog alone (local data lost). Baselines from the same run: a no-op Faust agent
reading the same topics (the ceiling of the Faust worker this one replaced), and a bare
write loop of the same state into the local store.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from rich.progress import Progress

from bench._figures import Figure
from bench._stack import kafka
from bench.bench_streams import _faust_noop_rate
from sluice.avro import SchemaSet, SingleObjectSerde
from sluice.config import project_root
from sluice.core.serve_token import format_serve_id
from sluice.core.spec import spec_from_mapping
from sluice.experiments import ExperimentRegistry
from sluice.kafka import TopicNames, ensure_topics, entity_key, topic_specs
from sluice.kafka.io import AvroProducer, read_to_end
from sluice.local.kafka import free_loopback_ports, stop_pid

SUITE = "scale"
ARMS = {"a": 0.02, "b": 0.03, "c": 0.04}
REWARDED = 0.03
LIMIT = 512 * 1024


def _spec():
    return spec_from_mapping({
        "id": "scale", "status": "running", "salt": "scale", "unit": "user_id", "entity": "site",
        "parameters": [{"name": "model", "type": "string"}],
        "arms": [{"name": a, "values": {"model": a}} for a in ARMS], "default_arm": "a",
        "policy": {"name": "thompson", "params": {}}, "reward": {"type": "binary", "name": "click"},
        "guardrails": {"floor": 0.02},
    })


def _produce(bootstrap: str, names: TopicNames, serde: SingleObjectSerde, n: int) -> int:
    """N serves of one entity over the last 12 hours (all live: inside the attribution
    window), 3 % of them rewarded; returns the number of events."""
    rng = np.random.default_rng(5)
    uniques = rng.bytes(12 * n).hex()  # random, as an SDK's are: no compression flatters the store
    key = entity_key("scale", "busy")
    start = int(time.time() * 1000) - 12 * 3_600_000
    spacing = 12 * 3_600_000 / n
    arms = list(ARMS)
    producer = AvroProducer(bootstrap, serde, **{"linger.ms": 50, "batch.num.messages": 10_000})
    events = 0
    with Progress(transient=True) as progress:
        task = progress.add_task("producing the backlog", total=n)
        for i in range(n):
            ts = start + int(i * spacing)
            arm = arms[i % len(arms)]
            sid = format_serve_id(uniques[24 * i:24 * (i + 1)], ts, True, arm)
            producer.send(names.serves, key, "ServeEvent", {
                "event_id": sid, "serve_id": sid, "experiment_id": "scale", "entity": "busy", "unit_id": f"u{i}",
                "arm": arm, "in_experiment": True, "propensity": 1 / 3, "weights_version": 1, "bucket": i % 10_000,
                "timestamp": ts, "context": {}})
            events += 1
            if rng.random() < REWARDED:
                producer.send(names.rewards, key, "RewardEvent", {
                    "event_id": uuid.uuid4().hex, "serve_id": sid, "experiment_id": "scale", "entity": "busy",
                    "name": "click", "value": 1.0, "timestamp": ts + 60_000, "latency_ms": None, "error": None})
                events += 1
            if i % 20_000 == 0:
                progress.update(task, completed=i)
    producer.flush(300)
    return events


class _Worker:
    def __init__(self, bootstrap: str, prefix: str, data_dir: Path, log: Path) -> None:
        (self.port,) = free_loopback_ports(1)
        self._log = open(log, "ab")
        env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap, "SLUICE_TOPIC_PARTITIONS": "1"}
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sluice.cli", "worker", "--prefix", prefix, "--metrics-port", str(self.port),
             "--instance-id", "scale-w1", "--data-dir", str(data_dir)],
            env=env, cwd=project_root(), stdout=self._log, stderr=subprocess.STDOUT)

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return -1.0
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def wait(self, ok, what: str, timeout_s: float = 900) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode} while waiting for {what}")
            if ok():
                return
            time.sleep(0.05)
        raise RuntimeError(f"worker: no {what} within {timeout_s} s")

    def processed(self) -> float:
        return self.metric("sluice_stream_events_total")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def stop(self) -> None:
        stop_pid(self.proc.pid, timeout_s=60, process=self.proc)
        self._log.close()


def _bare_store_rate(n: int, tmp: Path) -> tuple[float, int]:
    """The same per-serve state written straight into a local store: (events/s, bytes on disk)."""
    from streams.state import REWARDED as R_KIND
    from streams.state import Rewarded, serves_chunk_key
    from streams.store import LocalStore

    store = LocalStore(tmp / "bare")
    routing = entity_key("scale", "busy")
    rng = np.random.default_rng(5)
    uniques = rng.bytes(12 * n).hex()
    started = time.perf_counter()
    for first in range(0, n, 5_000):
        ids = [uniques[24 * i:24 * (i + 1)] for i in range(first, min(n, first + 5_000))]
        writes = {serves_chunk_key(routing, 0, first): b"".join(bytes.fromhex(u) for u in ids)}
        for u in ids:
            if rng.random() < REWARDED:
                writes[R_KIND + routing + b"\x1e" + (0).to_bytes(4, "big") + bytes.fromhex(u)] = Rewarded(1, 1.0).to_bytes()
        store.apply(writes.items(), {0: first})
    rate = n * (1 + REWARDED) / (time.perf_counter() - started)
    store.close()
    return rate, sum(f.stat().st_size for f in (tmp / "bare").rglob("*") if f.is_file())


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(quick: bool) -> list[Figure]:
    n = 200_000 if quick else 1_000_000
    serde = SingleObjectSerde(SchemaSet.bundled())
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="sluice-bench-scale-") as tmp_name, kafka() as bootstrap:
        tmp = Path(tmp_name)
        names = TopicNames(f"scale-{uuid.uuid4().hex[:8]}")
        ensure_topics(bootstrap, topic_specs(names, partitions=1))
        with ExperimentRegistry(bootstrap, names.prefix, serde) as registry:
            registry.apply(_spec())
        events = _produce(bootstrap, names, serde, n)
        print(f"   backlog: {n:,} serves, {events - n:,} rewards", file=sys.stderr)
        noop = _faust_noop_rate(bootstrap, [names.serves, names.rewards], events)
        print(f"   no-op Faust agent: {noop:,.0f} events/s", file=sys.stderr)

        data_dir, log = tmp / "worker", tmp / "worker.log"
        worker = _Worker(bootstrap, names.prefix, data_dir, log)
        try:
            worker.wait(lambda: worker.metric("sluice_stream_assigned_partitions") >= 1, "partition assignment")
            rss0, t0, done0 = worker.rss_bytes(), time.perf_counter(), worker.processed()
            rss_half = None
            with Progress(transient=True) as progress:
                task = progress.add_task("worker: backlog", total=events)
                while (done := worker.processed()) < events:
                    if worker.proc.poll() is not None:
                        raise RuntimeError(f"worker exited with {worker.proc.returncode}; see {log}")
                    if rss_half is None and done >= events / 2:
                        rss_half, half_done = worker.rss_bytes(), done
                    progress.update(task, completed=done)
                    time.sleep(0.25)
            rate = (events - done0) / (time.perf_counter() - t0)
            rss1 = worker.rss_bytes()
            largest = max(worker.metric("sluice_stream_largest_message_bytes", topic=t)
                          for t in ("worker-state", "weights", "decisions", "dlq"))
        finally:
            worker.stop()  # a clean stop flushes the store's memtables: its files then hold everything
        print(f"   worker: {rate:,.0f} events/s", file=sys.stderr)
        disk = _disk_bytes(data_dir / "state")
        written = read_to_end(bootstrap, [names.worker_state, names.weights, names.decisions, names.dlq], timeout_s=120)
        largest_on_topics = max(len(m.key or b"") + len(m.value or b"") for m in written)
        changelog = sum(len(m.key or b"") + len(m.value or b"") for m in written if m.topic == names.worker_state)

        def start_timed() -> tuple[_Worker, float]:
            w = _Worker(bootstrap, names.prefix, data_dir, log)
            try:
                w.wait(lambda: w.metric("sluice_stream_assigned_partitions") >= 1, "recovery", timeout_s=300)
            except BaseException:
                w.stop()
                raise
            return w, time.perf_counter() - w.started

        first, _ = start_timed()
        first.kill()  # mid-flight: its memtables and any open transaction are lost
        second, recovery_local = start_timed()
        second.stop()
        shutil.rmtree(data_dir)  # another machine takes the partition: only the changelog
        third, recovery_changelog = start_timed()
        third.stop()
        bare_rate, bare_disk = _bare_store_rate(n, tmp)

        note = f"{n:,} live serves of one entity, {events - n:,} rewards (3 %)"
        figures += [
            Figure(SUITE, "worker events/s on the busy entity's backlog", rate, "events/s", "higher",
                   "no-op Faust agent, same topics", noop, goal=noop, note=note),
            Figure(SUITE, "worker RSS growth per live serve", (rss1 - rss0) / n, "bytes", "lower",
                   "growth per serve over the second half", (rss1 - rss_half) / (events - half_done) if rss_half else None,
                   goal=50.0, note=f"RSS {rss0 / 2**20:.0f} MiB at start, {rss1 / 2**20:.0f} MiB after {n:,} serves; "
                                   f"RocksDB cache and memtables are bounded by configuration"),
            Figure(SUITE, "local state on disk per live serve", disk / n, "bytes", "lower",
                   "bare write loop of the same state", bare_disk / n,
                   note=f"{disk / 2**20:.1f} MiB; changelog on Kafka {changelog / n:.1f} bytes per serve"),
            Figure(SUITE, "largest message written (changelog, weights, decisions, dead letters)", largest_on_topics,
                   "bytes", "lower", "the worker's own gauge", largest, goal=LIMIT, note="the configured limit is the goal"),
            Figure(SUITE, f"restart after SIGKILL at {n:,} live serves: local store + changelog since checkpoint",
                   recovery_local, "s", "lower", "local data lost: the whole changelog", recovery_changelog, goal=30.0,
                   note="process start to partitions assigned and state loaded"),
            Figure(SUITE, "bare write loop of the store", bare_rate, "events/s", "higher", note="for scale: the store alone"),
        ]
    return figures
