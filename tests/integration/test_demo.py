"""`make demo`, short: two simulated days through the real broker, worker, sink and embedded
ClickHouse. Checks the summary's invariants, and that every process it started stops, also
on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
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


def child_pids(tmp_path: Path) -> list[int]:
    pids = tmp_path / "demo" / "children.pids"
    return [int(line.split()[1]) for line in pids.read_text().splitlines()] if pids.exists() else []


DECISIVE = Path(__file__).parent / "fixtures" / "demo_decisive.yaml"


def test_a_short_demo_lands_every_event_and_moves_weights_to_the_best_arm(tmp_path: Path) -> None:
    # The demo's own scenario (5 % against 3 %) leaves the bandit undecided after two days in
    # about 1 run in 100 (measured offline); the decisive one cannot (see its comment).
    summary_path = tmp_path / "summary.json"
    run = subprocess.run([sys.executable, "-m", "sluice.cli", "demo", "--days", "2", "--wall-seconds", "15",
                          "--summary-json", str(summary_path), "--rates", str(DECISIVE)],
                         capture_output=True, text=True, env=demo_env(tmp_path), timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    for table in ("serves", "rewards"):
        produced, landed = summary["produced"][table], summary["clickhouse"][table]
        assert produced == landed["rows"] == landed["distinct_event_ids"] > 0, (table, produced, landed)
    for advertiser in ("adv-acme", "adv-globex", "adv-initech"):  # transformer-v1 at 20 %, the others at 2-3 %
        weights = summary["final_weights"][f"demo-ranking/{advertiser}"]
        assert max(weights, key=weights.get) == "transformer-v1", (advertiser, weights)
    assert summary["regret"]["demo-ranking"]["policy"] < summary["regret"]["demo-ranking"]["equal_split"]
    assert {"sluice-worker: undecodable", "sluice-worker: unknown_arm", "sluice-worker: invalid_value"} <= set(summary["dead_letters"])
    # The failing model is rolled back for that advertiser, and for nothing else.
    rolled = {(a["experiment_id"], a["entity"], a["arm"]) for a in summary["rollbacks"]}
    assert rolled == {("demo-ranking", "adv-globex", "two-tower-v3")}, summary["rollbacks"]
    assert summary["final_weights"]["demo-ranking/adv-globex"]["two-tower-v3"] == 0
    assert not (tmp_path / "kafka" / "broker.pid").exists()
    assert child_pids(tmp_path) and not any(_alive(pid) for pid in child_pids(tmp_path))


def test_sigterm_during_the_demo_stops_everything_it_started(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "sluice.cli", "demo", "--days", "2", "--wall-seconds", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=demo_env(tmp_path))
    pid_file, children = tmp_path / "kafka" / "broker.pid", tmp_path / "demo" / "children.pids"
    deadline = time.monotonic() + 90
    while not children.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert children.exists(), "the demo never started its worker and sink"
    broker_pid = int(pid_file.read_text())
    time.sleep(3)  # mid-simulation
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=90)
    assert not _alive(broker_pid), f"broker {broker_pid} outlived the demo"
    assert not any(_alive(pid) for pid in child_pids(tmp_path))


LIFECYCLE = Path(__file__).parent / "fixtures" / "demo_lifecycle.yaml"


def run_kept(tmp_path: Path, *args: str) -> str:
    """`sluice demo --keep ARGS` until it says what it keeps running; checks that the console
    answers, then stops the demo with SIGTERM and checks that everything it started stopped.
    Returns what it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "sluice.cli", "demo", "--keep", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=demo_env(tmp_path) | {"PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 300
        for line in proc.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if "kept running" in line or time.monotonic() > deadline:
                break
        kept = re.search(r"the console at (http://\S+)/console/", "".join(seen[-3:]))
        assert kept, "".join(seen[-60:])
        with urllib.request.urlopen(f"{kept.group(1)}/healthz", timeout=10) as resp:
            assert resp.status == 200
        broker_pid = int((tmp_path / "kafka" / "broker.pid").read_text())
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not _alive(broker_pid), f"broker {broker_pid} outlived the demo"
    assert child_pids(tmp_path) and not any(_alive(pid) for pid in child_pids(tmp_path))
    return "".join(seen)


def test_the_demo_retrains_stale_models_in_one_grouped_job_and_the_new_versions_replace_them(tmp_path: Path) -> None:
    # With --keep, which the run also checks: the console stays up after the summary.
    summary_path = tmp_path / "summary.json"
    printed = run_kept(tmp_path, "--days", "5", "--wall-seconds", "40", "--summary-json", str(summary_path),
                       "--rates", str(LIFECYCLE))
    assert "read token: sluice_" in printed
    summary = json.loads(summary_path.read_text())
    life = summary["lifecycle"]
    sites = {"site-north", "site-south", "site-east"}
    # The scheduler found version 1 stale and sent one job for the three similar datasets.
    first = life["jobs"][0]
    assert set(first["members"]) == sites and "every_days" in first["reasons"], life["jobs"]
    assert 1.0 <= first["day"] < 1.5, first  # due at 4 days of age: one simulated day in
    trained = [r for r in life["results"] if r["job_id"] == first["job_id"] and r["status"] == "SUCCEEDED"]
    assert trained and sorted(trained[0]["versions"]) == sorted(f"{s}/ctr-lr/2" for s in sites), life["results"]
    versions = {(v["entity"], v["version"]): v for v in life["versions"]}
    # No site is sent again while its job runs: a later job comes after the versions it made.
    assert all(job["day"] >= versions[(s, 2)]["trained_day"] for job in life["jobs"][1:] for s in job["members"]), life
    for site in sites:
        old, new = versions[(site, 1)], versions[(site, 2)]
        # The old version left: retired in the registry, with the reason, and no traffic left
        # (a removed arm stays in the table at 0 for the window's statistics).
        assert old["status"] == "retired" and ("ctr-lr-v2" in old["reason"] or "retired by" in old["reason"]), old
        weights = summary["final_weights"][f"demo-models/{site}"]
        assert weights.get("ctr-lr-v1", 0.0) == 0.0, weights
        # The new one entered on data that ended when it was trained, and took the traffic.
        assert new["source"] == "trainer" and abs(new["data_end_day"] - new["trained_day"]) < 0.5, new
        # It learned the device effect from the logged context (a model of the rate alone: 0.5).
        assert new["auc"] > 0.55, new
        chosen = summary["chosen"][f"demo-models/{site}"]  # the most served arm of the last simulated day
        assert chosen["chosen"].startswith("ctr-lr-v") and chosen["chosen"] != "ctr-lr-v1", chosen
        assert chosen["share"] > 0.5, chosen
    assert "scheduler: ctr-lr of" in printed and "lifecycle: retired" in printed, printed[-3000:]

