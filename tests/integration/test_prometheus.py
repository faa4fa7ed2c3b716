"""Prometheus: the alert rules pass `promtool` and their unit tests, name only metrics Sluice
exports, each carry a runbook; and a real Prometheus server scrapes a running sidecar and
stream worker and answers queries about them."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from sluice.client.delivery import DeliveryCounts
from sluice.config import project_root
from sluice.experiments import ExperimentRegistry
from sluice.kafka import TopicNames, ensure_topics, topic_specs
from sluice.local.kafka import free_loopback_ports
from sluice.metrics import DeliveryCollector, SidecarMetrics, StreamMetrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sidecar_support import Sidecar, publish_table  # noqa: E402
from stream_support import WorkerProcess, bandit_spec  # noqa: E402

pytestmark = pytest.mark.integration
PROM = project_root() / "deploy" / "prometheus"


def promtool(*args: str, cwd: Path = PROM) -> str:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: `make tools` installs the Debian package prometheus")
    run = subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_config_and_rules_pass_promtool_and_their_unit_tests() -> None:
    promtool("check", "config", "prometheus.yml")
    assert "SUCCESS" in promtool("test", "rules", *sorted(str(p.relative_to(PROM)) for p in (PROM / "tests").glob("*.yml")))


def exported_names() -> set[str]:
    """Every sample name Sluice's processes can export."""
    registry = CollectorRegistry()
    StreamMetrics.create(registry)
    SidecarMetrics.create(registry)

    class Delivery:  # only the attributes the collector reads, to list its names
        counts, spill_pending_bytes = DeliveryCounts(), 0

    registry.register(DeliveryCollector(Delivery()))
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}


def test_rules_name_only_exported_metrics_and_each_has_a_runbook() -> None:
    known = exported_names()
    rules = [r for g in yaml.safe_load((PROM / "rules" / "sluice.rules.yml").read_text())["groups"] for r in g["rules"]]
    assert len(rules) >= 9
    for rule in rules:
        assert rule["annotations"].get("runbook"), f"{rule['alert']} has no runbook"
        used = set(re.findall(r"\bsluice_[a-z0-9_]+", rule["expr"]))
        assert used <= known, f"{rule['alert']} uses {sorted(used - known)}, which nothing exports"
    alerted = {r["alert"] for r in rules}
    tested = set(re.findall(r"alertname: (\w+)", (PROM / "tests" / "sluice.rules.test.yml").read_text()))
    assert alerted == tested, f"rules without a unit test: {sorted(alerted - tested)}"


def test_a_real_prometheus_scrapes_the_sidecar_and_the_worker(kafka_bootstrap, topic_prefix, serde, tmp_path) -> None:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is missing: `make tools` installs the Debian package prometheus")
    ensure_topics(kafka_bootstrap, topic_specs(TopicNames(topic_prefix), partitions=3))
    spec = bandit_spec("exp", ["a", "b"])
    with ExperimentRegistry(kafka_bootstrap, topic_prefix, serde) as registry:
        registry.apply(spec)
    publish_table(kafka_bootstrap, topic_prefix, serde, spec, "site-1", [5000, 5000], version=1)
    sidecar = Sidecar(kafka_bootstrap, topic_prefix, tmp_path / "sidecar", tmp_path / "sidecar.log")
    worker_port, prom_port = free_loopback_ports(2)
    worker = WorkerProcess(kafka_bootstrap, topic_prefix, tmp_path / "worker.log", metrics_port=worker_port,
                           env={"SLUICE_TOPIC_PARTITIONS": "3"})
    config = {"global": {"scrape_interval": "1s"}, "scrape_configs": [
        {"job_name": "sluice-sidecar", "static_configs": [{"targets": [f"127.0.0.1:{sidecar.port}"]}]},
        {"job_name": "sluice-worker", "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=open(tmp_path / "prometheus.log", "wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{prom_port}"

    def query(expr: str) -> list[dict]:
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())["data"]["result"]

    try:
        sidecar.wait_ready()
        for i in range(25):
            sidecar.request("POST", "/v1/assign", {"experiment": "exp", "unit_id": f"u-{i}", "entity": "site-1"})
        deadline = time.monotonic() + 60
        found: dict[str, list[dict]] = {}
        while time.monotonic() < deadline:
            try:
                found = {
                    "assign": query('sluice_sidecar_requests_total{route="/v1/assign",status="200"}'),
                    "worker": query("sluice_stream_events_total"),
                    "up": query("up == 1"),
                }
            except OSError:
                pass  # not ready yet
            assigned = float(found["assign"][0]["value"][1]) if found.get("assign") else 0.0
            if assigned == 25 and found.get("worker") and len(found.get("up", [])) == 2:
                break  # (a scrape taken while the requests were still coming in shows fewer)
            time.sleep(0.5)
        assert found.get("assign") and float(found["assign"][0]["value"][1]) == 25, found
        assert {r["metric"]["job"] for r in found["up"]} == {"sluice-sidecar", "sluice-worker"}, found
        assert {r["metric"]["topic"] for r in found["worker"]} == {"serves"}, found  # the 25 serves reached the worker
    finally:
        prom.send_signal(signal.SIGTERM)
        prom.wait(30)
        sidecar.stop()
        worker.stop()
