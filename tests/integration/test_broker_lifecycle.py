"""The broker fixture starts one broker per test session and leaves no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.local.kafka import _alive

pytestmark = pytest.mark.integration

INNER = '''
import pytest

def test_one(kafka_bootstrap):
    assert kafka_bootstrap.startswith("127.0.0.1:")

def test_two(kafka_bootstrap):
    assert kafka_bootstrap.startswith("127.0.0.1:")
'''


def test_one_broker_per_session_and_none_left_after_it(tmp_path: Path) -> None:
    tests_dir = Path(__file__).resolve().parents[1]
    inner = tmp_path / "test_inner.py"
    inner.write_text(INNER)
    pids_file = tmp_path / "pids"
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "SLUICE_TEST_KAFKA")}
    env["SLUICE_TEST_RECORD_BROKER_PID"] = str(pids_file)
    run = subprocess.run(
        # The inner session loads our conftest as a plugin, so it uses the very same fixture.
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest", str(inner)],
        capture_output=True, text=True, env=env, timeout=240, cwd=tests_dir.parent,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 1, f"expected one broker for the session, started {pids}"
    assert not _alive(pids[0]), f"broker pid {pids[0]} still running after its session"


def test_storage_formats_with_a_cluster_id_that_starts_with_a_dash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One random cluster id in 64 starts with "-"; the storage tool once took it for an option.
    import sluice.local.kafka as local_kafka
    from sluice.config import project_root

    monkeypatch.setattr(local_kafka, "_kafka_uuid", lambda: "-MJoB-hDTC2hfUCrvdqtyw")
    broker = local_kafka.KafkaBroker(data_dir=tmp_path, cache_dir=Path(os.environ.get("SLUICE_CACHE", project_root() / ".cache")))
    broker._format()
    assert "cluster.id=-MJoB-hDTC2hfUCrvdqtyw" in (tmp_path / "kraft-logs" / "meta.properties").read_text()
