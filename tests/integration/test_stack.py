"""`sluice up` / `sluice down`: the local stack as a user starts and stops it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.config import project_root
from sluice.kafka import topic_specs
from sluice.local.kafka import _alive
from tests.conftest import free_ports

pytestmark = pytest.mark.integration


def sluice(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sluice.cli", *args], capture_output=True, text=True, env=env, timeout=120)


def test_up_starts_broker_topics_and_tables_and_down_stops_it_by_pid(tmp_path: Path) -> None:
    port, controller = free_ports(2)
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "CLICKHOUSE_URL")}
    env |= {"SLUICE_HOME": str(tmp_path), "SLUICE_KAFKA_PORT": str(port), "SLUICE_KAFKA_CONTROLLER_PORT": str(controller),
            "SLUICE_CACHE": os.environ.get("SLUICE_CACHE", str(project_root() / ".cache"))}
    up = sluice("up", env=env)
    pid_file = tmp_path / "kafka" / "broker.pid"
    try:
        assert up.returncode == 0, up.stderr
        assert f"at 127.0.0.1:{port}, ready after" in up.stdout
        topics = len(topic_specs())
        assert f"topics: {topics} created" in up.stdout
        pid = int(pid_file.read_text())
        assert _alive(pid)

        again = sluice("up", env=env)
        assert again.returncode == 0, again.stderr
        assert f"local broker pid {pid} already running" in again.stdout
        assert f"topics: 0 created, {topics} unchanged" in again.stdout
        assert "migrations applied now: none" in again.stdout
    finally:
        down = sluice("down", env=env)
    assert down.returncode == 0, down.stderr
    assert f"stopped broker pid {pid}" in down.stdout
    assert not _alive(pid)
    assert not pid_file.exists()
