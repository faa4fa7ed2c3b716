"""`make demo` (the foundation's form): events go through Kafka and ClickHouse and come
back; a SIGTERM mid-run still stops the broker it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sluice.config import project_root
from sluice.local.kafka import _alive
from tests.conftest import free_ports

pytestmark = pytest.mark.integration


def demo_env(tmp_path: Path) -> dict[str, str]:
    port, controller = free_ports(2)
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "CLICKHOUSE_URL")}
    return env | {"SLUICE_HOME": str(tmp_path), "SLUICE_KAFKA_PORT": str(port), "SLUICE_KAFKA_CONTROLLER_PORT": str(controller),
                  "SLUICE_CACHE": os.environ.get("SLUICE_CACHE", str(project_root() / ".cache"))}


def test_demo_round_trips_events_and_stops_its_broker(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "sluice.cli", "demo"], capture_output=True, text=True, env=demo_env(tmp_path), timeout=180)
    assert run.returncode == 0, run.stderr
    assert "produced 6 serves and 3 rewards" in run.stdout
    assert "read back 9 of them from Kafka" in run.stdout
    for arm in ("model-a", "model-b", "model-c"):
        assert f"{arm}  serves=2 clicks=1" in run.stdout
    assert "stopped the broker this demo started" in run.stdout
    assert not (tmp_path / "kafka" / "broker.pid").exists()


def test_sigterm_during_the_demo_stops_the_broker_it_started(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "sluice.cli", "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=demo_env(tmp_path))
    pid_file = tmp_path / "kafka" / "broker.pid"
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    broker_pid = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert not _alive(broker_pid), f"broker {broker_pid} outlived the demo"
