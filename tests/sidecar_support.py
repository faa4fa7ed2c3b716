"""Helpers for the sidecar's tests: publish specs and weight tables, run `sluice sidecar`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from sluice.core.allocation import Allocation
from sluice.core.spec import ExperimentSpec
from sluice.kafka.clients import entity_key
from sluice.kafka.io import AvroProducer
from sluice.local.kafka import free_loopback_ports, stop_pid

ROOT = Path(__file__).resolve().parents[1]


def publish_table(bootstrap: str, prefix: str, serde: Any, spec: ExperimentSpec, entity: str, counts: list[int],
                  version: int) -> dict[str, Any]:
    """Publish a WeightTable giving the arms of `spec` these bucket counts, as the worker would."""
    allocation = Allocation.contiguous(counts, spec.num_buckets)
    record = {
        "event_id": str(uuid.uuid4()), "experiment_id": spec.id, "entity": entity, "version": version,
        "num_buckets": spec.num_buckets, "arms": allocation.to_arm_weights(spec.arm_names), "policy": "static",
        "reason": "published by a test", "statistics": [], "window_start": 0, "window_end": 0,
        "computed_at": int(time.time() * 1000),
    }
    producer = AvroProducer(bootstrap, serde)
    producer.send(f"{prefix}.weights.v1", entity_key(spec.id, entity), "WeightTable", record)
    producer.flush()
    return record


class Sidecar:
    """`sluice sidecar` as a child process on a free loopback port, stopped by pid."""

    def __init__(self, bootstrap: str, prefix: str, state_dir: Path, log_path: Path, *, ready_timeout: float = 10,
                 env: dict[str, str] | None = None) -> None:
        (self.port,) = free_loopback_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab")
        self.log_path = log_path
        env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sluice.cli", "sidecar", "--prefix", prefix, "--port", str(self.port),
             "--state-dir", str(state_dir), "--ready-timeout", str(ready_timeout)],
            env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited with {self.proc.returncode}; log {self.log_path}")
            try:
                status, body = self.request("GET", "/readyz")
                if status == 200:
                    return body
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"sidecar not ready within {timeout_s} s; log {self.log_path}")

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"content-type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, text = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text.decode()

    def stop(self) -> None:
        stop_pid(self.proc.pid, timeout_s=20, process=self.proc)
        self._log.close()
