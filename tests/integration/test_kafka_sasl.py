"""Kafka secured with SASL_SSL and SCRAM-SHA-512, end to end.

A broker of this module's own gets a SASL_SSL listener: a CA and the broker's certificate
are made here with `openssl`, and the SCRAM user is created when the storage is formatted.
The worker, the sidecar and the sink run through that listener with the credentials and CA
file from the environment, as in production: serves logged by the sidecar reach the worker,
whose weight tables reach the sidecar again, and everything lands in ClickHouse through the
sink. A client without credentials, with a wrong password or without the CA is refused,
with an error that says why, and changes nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from sluice.config import project_root
from sluice.experiments import ExperimentRegistry
from sluice.kafka import KafkaAdapterError, TopicNames, ensure_topics, topic_specs
from sluice.kafka.clients import admin_config
from sluice.kafka.io import read_to_end
from sluice.kafka.security import PLAINTEXT, KafkaSecurity
from sluice.local.kafka import KafkaBroker, SaslSslListener, free_loopback_ports, wait_until_ready

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sidecar_support import Sidecar  # noqa: E402
from stream_support import WorkerProcess, bandit_spec, latest_tables  # noqa: E402

pytestmark = pytest.mark.integration

USER, PASSWORD = "sluice-test", "scram-test-password-7f3a"
ENTITY = "site-1"


def make_certificates(folder: Path) -> tuple[Path, Path]:
    """A throwaway CA, and a certificate it signs for 127.0.0.1 (the name clients verify).

    Returns (the CA's certificate, the broker's PEM keystore: its PKCS#8 private key, then
    its certificate chain). EC P-256 keys: made in milliseconds, and Java takes them."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl not found on PATH: this test makes its certificates with it "
                           "(deploy/local/ensure-tools installs it)")
    folder.mkdir(parents=True)

    def openssl(*args: str) -> None:
        done = subprocess.run(["openssl", *args], cwd=folder, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)} failed (exit {done.returncode}): {done.stderr}")

    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-noenc"]
    openssl("req", "-x509", *new_key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Sluice test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", *new_key, "-keyout", "broker.key", "-out", "broker.csr", "-subj", "/CN=localhost")
    (folder / "broker.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                       "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "broker.ext", "-out", "broker.pem")
    keystore = folder / "broker-keystore.pem"
    keystore.write_text("".join((folder / name).read_text() for name in ("broker.key", "broker.pem", "ca.pem")))
    return folder / "ca.pem", keystore


@dataclass(frozen=True)
class SecuredKafka:
    bootstrap: str
    security: KafkaSecurity

    @property
    def environment(self) -> dict[str, str]:
        """What a process needs in its environment to reach this broker."""
        return {"KAFKA_BOOTSTRAP": self.bootstrap, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": USER, "KAFKA_SASL_PASSWORD": PASSWORD,
                "KAFKA_SSL_CA_LOCATION": str(self.security.ca_location)}


@pytest.fixture(scope="module")
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    folder = tmp_path_factory.mktemp("sasl-kafka")
    ca, keystore = make_certificates(folder / "tls")
    port, controller_port, sasl_port = free_loopback_ports(3)
    broker = KafkaBroker(data_dir=folder / "kafka", cache_dir=Path(os.environ.get("SLUICE_CACHE", project_root() / ".cache")),
                         port=port, controller_port=controller_port,
                         sasl_ssl=SaslSslListener(sasl_port, keystore, {USER: PASSWORD}))
    broker.start()
    try:
        security = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", USER, PASSWORD, ca)
        wait_until_ready(broker.sasl_ssl_bootstrap, security=security, timeout_s=30)
        yield SecuredKafka(broker.sasl_ssl_bootstrap, security)
    finally:
        broker.stop()


def run_cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sluice.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=project_root())


def wait_for(what: str, probe: Any, timeout_s: float, log: Path) -> Any:
    """Poll `probe()` until it returns something truthy; fail naming `what` and the log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for worker in WorkerProcess.running:
            if worker.proc.poll() is not None:
                raise AssertionError(f"worker exited with {worker.proc.returncode}; log {worker.log_path}")
        found = probe()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout_s:.0f} s; see {log}")


def totals(table: dict[str, Any]) -> tuple[int, int, float]:
    """(serves, in-experiment serves, reward sum) of a weight table, over its arms."""
    stats = table["statistics"]
    return sum(s["serves"] for s in stats), sum(s["count"] for s in stats), sum(s["sum"] for s in stats)


def test_worker_sidecar_and_sink_run_through_sasl_ssl(secured_kafka: SecuredKafka, topic_prefix: str, serde: Any,
                                                       tmp_path: Path) -> None:
    bootstrap, security = secured_kafka.bootstrap, secured_kafka.security
    kafka = secured_kafka.environment | {"SLUICE_TOPIC_PARTITIONS": "3"}
    env = {k: v for k, v in os.environ.items() if k != "CLICKHOUSE_URL"} | kafka | {"SLUICE_HOME": str(tmp_path / "home")}
    created = run_cli(env, "topics", "create", "--prefix", topic_prefix)
    assert created.returncode == 0, created.stderr
    with ExperimentRegistry(bootstrap, topic_prefix, serde, security=security) as registry:
        registry.apply(bandit_spec("exp", ["a", "b", "c"]))

    (metrics_port,) = free_loopback_ports(1)
    worker = WorkerProcess(bootstrap, topic_prefix, tmp_path / "worker.log", metrics_port=metrics_port, env=kafka)
    sidecar = Sidecar(bootstrap, topic_prefix, tmp_path / "sidecar", tmp_path / "sidecar.log", env=kafka)
    try:
        assert sidecar.wait_ready()["live"], "the sidecar did not read the topics through SASL_SSL"

        def assign(unit_id: str) -> dict[str, Any]:
            status, body = sidecar.request("POST", "/v1/assign", {"experiment": "exp", "unit_id": unit_id, "entity": ENTITY})
            assert status == 200, body
            return body

        def reward(served: list[dict[str, Any]]) -> None:
            for body in served:
                status, answer = sidecar.request("POST", "/v1/rewards", {"serve_id": body["serve_id"], "experiment": "exp",
                                                                         "entity": ENTITY, "value": 1})
                assert status == 200, answer

        def table() -> dict[str, Any] | None:
            return latest_tables(bootstrap, topic_prefix, serde, security=security).get(("exp", ENTITY))

        # No table yet: the default arm, outside the experiment. The worker counts these
        # serves and publishes the first table, which the sidecar then serves from.
        before = [assign(f"u-{i}") for i in range(30)]
        reward(before[:10])
        assert {b["source"] for b in before} == {"default"}
        first = wait_for("the worker published no table counting the first 30 serves",
                         lambda: (t := table()) is not None and totals(t)[0] == 30 and t, 90, worker.log_path)
        probes: list[dict[str, Any]] = []  # logged as serves too

        def serves_first_table() -> bool:
            probes.append(assign(f"probe-{len(probes)}"))
            return probes[-1]["weights_version"] >= first["version"]

        wait_for(f"the sidecar never served table version {first['version']}", serves_first_table, 30, sidecar.log_path)
        after = [assign(f"v-{i}") for i in range(20)]
        reward(after[:10])
        assert {b["source"] for b in after} == {"table"}
        in_experiment = sum(b["in_experiment"] for b in after + probes)
        rewarded_inside = sum(b["in_experiment"] for b in after[:10])
        assert rewarded_inside > 0, "no rewarded serve was in the experiment: nothing would show the rewards counted"
        expected = (30 + len(probes) + 20, in_experiment, float(rewarded_inside))
        wait_for(f"the worker's table never counted (serves, in-experiment serves, rewards) = {expected}",
                 lambda: (t := table()) is not None and totals(t) == expected, 90, worker.log_path)
    finally:
        sidecar.stop()  # delivers the serves it logged before it exits
        worker.stop()

    serves = {serde.decode(m.value, "ServeEvent").record["serve_id"]
              for m in read_to_end(bootstrap, [f"{topic_prefix}.serves.v1"], security=security)}
    assert serves == {b["serve_id"] for b in before + probes + after}
    tables = read_to_end(bootstrap, [f"{topic_prefix}.weights.v1"], security=security)

    sink = run_cli(env, "sink", "--prefix", topic_prefix, "--stop-when-idle", "3", "--evaluate-every-hours", "0")
    assert sink.returncode == 0, sink.stderr
    landed = run_cli(env, "db", "query", "SELECT (SELECT uniqExact(serve_id) FROM sluice.serves), "
                     "(SELECT count() FROM sluice.rewards), (SELECT uniqExact(event_id) FROM sluice.weights)")
    assert landed.returncode == 0, landed.stderr
    assert tuple(map(int, landed.stdout.split())) == (len(serves), 20, len(tables))


def test_a_client_without_credentials_a_wrong_password_or_no_ca_is_refused(secured_kafka: SecuredKafka,
                                                                           topic_prefix: str) -> None:
    bootstrap = secured_kafka.bootstrap
    specs = topic_specs(TopicNames(topic_prefix), partitions=1)
    refused = [
        (PLAINTEXT, "security protocol PLAINTEXT"),
        (replace(secured_kafka.security, password="not-the-password"),
         "Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"),
        (replace(secured_kafka.security, ca_location=None), "certificate verify failed"),
    ]
    for security, cause in refused:
        with pytest.raises(KafkaAdapterError, match=cause) as caught:
            ensure_topics(bootstrap, specs, security=security, timeout_s=5)
        assert f"cannot list topics at {bootstrap}" in str(caught.value)

    from confluent_kafka.admin import AdminClient

    topics = AdminClient(admin_config(bootstrap, secured_kafka.security)).list_topics(timeout=30).topics
    assert not [t for t in topics if t.startswith(topic_prefix)], "a refused client created topics"
