"""Helpers for the stream worker's tests: synthetic traffic, an independent recomputation
of the statistics from the events, worker processes, and reading published tables.

The recomputation here is written from the rules in README ("Attribution") without the
worker's code, so that a test comparing the two checks the worker, not itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sluice.core.health import REQUEST_OUTCOME
from sluice.core.serve_token import ServeTokenError, format_serve_id, parse_serve_id
from sluice.core.spec import ExperimentSpec, spec_from_mapping
from sluice.kafka.clients import entity_key
from sluice.kafka.io import AvroProducer, read_to_end
from sluice.kafka.security import PLAINTEXT, KafkaSecurity
from sluice.local.kafka import stop_pid

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
ROOT = Path(__file__).resolve().parents[1]


def bandit_spec(exp_id: str, arms: list[str], *, policy: str = "thompson", status: str = "running",
                reward_type: str = "binary", window_days: float = 7.0, attribution_hours: float = 24.0,
                **extra: Any) -> ExperimentSpec:
    return spec_from_mapping({
        "id": exp_id, "status": status, "salt": f"{exp_id}-salt", "unit": "user_id", "entity": "site",
        "parameters": [{"name": "model", "type": "string"}],
        "arms": [{"name": a, "values": {"model": f"m-{a}"}} for a in arms],
        "default_arm": arms[0], "policy": {"name": policy, "params": {}},
        "reward": {"type": reward_type, "name": "click", "attribution_window_hours": attribution_hours},
        "window_days": window_days, "guardrails": {"floor": 0.02}, **extra,
    })


@dataclass
class Traffic:
    """Events as produced, in order: (topic kind, key, record)."""

    events: list[tuple[str, bytes, dict[str, Any]]] = field(default_factory=list)

    def serve(self, exp: str, entity: str, arm: str, ts: int, *, in_experiment: bool = True,
              serve_id: str | None = None) -> str:
        """Log a serve; its serve id is the serve token an SDK would make (or `serve_id`)."""
        serve_id = serve_id or format_serve_id(uuid.uuid4().hex[:24], ts, in_experiment, arm)
        self.events.append(("serves", entity_key(exp, entity), {
            "event_id": str(uuid.uuid4()), "serve_id": serve_id, "experiment_id": exp, "entity": entity,
            "unit_id": f"u-{uuid.uuid4().hex[:8]}", "arm": arm, "in_experiment": in_experiment,
            "propensity": 0.25, "weights_version": 0, "bucket": 0, "timestamp": ts, "context": {},
        }))
        return serve_id

    def reward(self, exp: str, entity: str, serve_id: str, value: float, ts: int, name: str = "click") -> None:
        self.events.append(("rewards", entity_key(exp, entity), {
            "event_id": str(uuid.uuid4()), "serve_id": serve_id, "experiment_id": exp, "entity": entity,
            "name": name, "value": value, "timestamp": ts, "latency_ms": None, "error": None,
        }))

    def outcome(self, exp: str, entity: str, serve_id: str, ts: int, *, latency_ms: float | None = None,
                error: bool | None = None) -> None:
        """How a served request went (what `SluiceClient.log_outcome` logs)."""
        self.events.append(("rewards", entity_key(exp, entity), {
            "event_id": str(uuid.uuid4()), "serve_id": serve_id, "experiment_id": exp, "entity": entity,
            "name": REQUEST_OUTCOME, "value": 0.0, "timestamp": ts, "latency_ms": latency_ms, "error": error,
        }))

    def bandit(self, exp: str, entities: list[str], rates: dict[str, float], n_per_entity: int, start_ms: int,
               rng: np.random.Generator, *, spacing_ms: int = 1_000, reward_delay_ms: int = 60_000) -> None:
        """Serves spread evenly over arms, each rewarded with its arm's probability."""
        arms = list(rates)
        for entity in entities:
            for i in range(n_per_entity):
                arm = arms[int(rng.integers(len(arms)))]
                ts = start_ms + i * spacing_ms
                sid = self.serve(exp, entity, arm, ts)
                if rng.random() < rates[arm]:
                    self.reward(exp, entity, sid, 1.0, ts + int(rng.integers(reward_delay_ms)))

    def produce(self, bootstrap: str, prefix: str, serde: Any, start: int = 0, stop: int | None = None) -> None:
        producer = AvroProducer(bootstrap, serde)
        schema = {"serves": "ServeEvent", "rewards": "RewardEvent"}
        for kind, key, record in self.events[start:stop]:
            producer.send(f"{prefix}.{kind}.v1", key, schema[kind], record)
        producer.flush()


def expected_statistics(traffic: Traffic, specs: dict[str, ExperimentSpec]) -> dict[tuple[str, str], dict[str, tuple]]:
    """(experiment, entity) → arm → (serves, count, sum, sum_squares) over each key's window.

    Serves count in the hour of their time (a serve id counts once); a reward counts for the
    serve its serve id names (arm, time, in-experiment flag: a serve token), whether or not
    the serve itself was logged, when its name is the experiment's reward and it comes
    within the attribution window after that serve's time."""
    serves: dict[str, dict[str, Any]] = {}
    rewards: dict[str, list[dict[str, Any]]] = defaultdict(list)
    newest: dict[tuple[str, str], int] = defaultdict(int)
    for kind, _, r in traffic.events:
        newest[(r["experiment_id"], r["entity"])] = max(newest[(r["experiment_id"], r["entity"])], r["timestamp"])
        if kind == "serves":
            serves.setdefault(r["serve_id"], r)  # a duplicate serve id counts once
        else:
            rewards[r["serve_id"]].append(r)
    out: dict[tuple[str, str], dict[str, list[float]]] = {}

    def first_hour(key: tuple[str, str]) -> int:
        return (newest[key] - specs[key[0]].window_ms) // HOUR_MS

    for s in serves.values():
        key = (s["experiment_id"], s["entity"])
        if s["timestamp"] // HOUR_MS < first_hour(key):
            continue
        acc = out.setdefault(key, {}).setdefault(s["arm"], [0, 0, 0.0, 0.0])
        acc[0] += 1
        acc[1] += 1 if s["in_experiment"] else 0
    for sid, rs in rewards.items():
        key = (rs[0]["experiment_id"], rs[0]["entity"])
        spec = specs[key[0]]
        try:
            token = parse_serve_id(sid)
        except ServeTokenError:
            continue  # dead-lettered
        if not token.in_experiment or token.hour < first_hour(key):
            continue
        total = 0.0
        for r in rs:
            if r["name"] != spec.reward.name or r["timestamp"] - token.serve_ms > spec.reward.attribution_window_ms:
                continue
            total = 1.0 if spec.reward.type == "binary" and r["value"] == 1.0 else (
                total if spec.reward.type == "binary" else total + r["value"])
        acc = out.setdefault(key, {}).setdefault(token.arm, [0, 0, 0.0, 0.0])
        acc[2] += total
        acc[3] += total * total
    return {k: {a: tuple(v) for a, v in arms.items() if v[0]} for k, arms in out.items()}


def latest_tables(bootstrap: str, prefix: str, serde: Any, *,
                  security: KafkaSecurity = PLAINTEXT) -> dict[tuple[str, str], dict[str, Any]]:
    """The newest WeightTable of every (experiment, entity) on the weights topic."""
    tables: dict[tuple[str, str], dict[str, Any]] = {}
    for msg in read_to_end(bootstrap, [f"{prefix}.weights.v1"], security=security):
        rec = serde.decode(msg.value, "WeightTable").record
        key = (rec["experiment_id"], rec["entity"])
        if key not in tables or rec["version"] > tables[key]["version"]:
            tables[key] = rec
    return tables


def table_statistics(table: dict[str, Any]) -> dict[str, tuple]:
    """arm → (serves, count, sum, sum_squares) of a table, leaving out arms with no serves."""
    return {s["arm"]: (s["serves"], s["count"], s["sum"], s["sum_squares"])
            for s in table["statistics"] if s["serves"]}


def wait_for_statistics(bootstrap: str, prefix: str, serde: Any, expected: dict, timeout_s: float = 90.0) -> dict:
    """Poll the weights topic until every key's latest table carries `expected`; returns
    the tables, or fails showing the difference (at once if a worker died)."""
    deadline = time.monotonic() + timeout_s
    got: dict = {}
    while time.monotonic() < deadline:
        for worker in WorkerProcess.running:
            if worker.proc.poll() is not None and not worker.killed:
                raise AssertionError(f"worker exited with {worker.proc.returncode}; log {worker.log_path}")
        tables = latest_tables(bootstrap, prefix, serde)
        got = {k: table_statistics(t) for k, t in tables.items()}
        if got == expected:
            return tables
        time.sleep(0.5)
    raise AssertionError(f"published statistics never matched the recomputation:\n got {got}\n expected {expected}")


class WorkerProcess:
    """`sluice worker` as a child process (so a test can SIGKILL it), stopped by pid."""

    running: list[WorkerProcess] = []  # started and not stopped: watched while a test waits

    def __init__(self, bootstrap: str, prefix: str, log_path: Path, *, metrics_port: int,
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.metrics_port = metrics_port
        self.log_path = log_path
        # The worker's data directory goes under the test's temporary directory, not .data/.
        env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap, "SLUICE_HOME": str(log_path.parent / "home"), **(env or {})}
        cmd = [sys.executable, "-m", "sluice.cli", "worker", "--prefix", prefix, "--publish-interval", "0.2",
               "--metrics-port", str(metrics_port), *extra_args]
        self._log = open(log_path, "ab")
        self.killed = False
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        WorkerProcess.running.append(self)

    def metric(self, name: str, **labels: str) -> float:
        """Current value of one sample on the worker's /metrics (0 if absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def wait_metric(self, name: str, value: float, timeout_s: float = 60.0, **labels: str) -> None:
        """Wait until the sample equals `value`."""
        self._wait(name, lambda v: v == value, f"== {value}", timeout_s, labels)

    def wait_metric_above(self, name: str, value: float, timeout_s: float = 60.0, **labels: str) -> None:
        self._wait(name, lambda v: v > value, f"> {value}", timeout_s, labels)

    def _wait(self, name: str, ok: Any, want: str, timeout_s: float, labels: dict[str, str]) -> None:
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}; log {self.log_path}")
            try:
                last = self.metric(name, **labels)
                if ok(last):
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.05)
        raise AssertionError(f"{name}{labels} stayed {last}, expected {want}; log {self.log_path}")

    def kill(self) -> None:
        self.killed = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        stop_pid(self.proc.pid, timeout_s=30, process=self.proc)
        self._log.close()
        if self in WorkerProcess.running:
            WorkerProcess.running.remove(self)
