"""Fetch, format, start and stop a real single-node Apache Kafka (KRaft) broker.

The jars come from Maven Central through the ordinary `mvn` client
(`sluice/local/data/pom.xml`, shipped with the package), cached under
`SLUICE_CACHE/kafka/libs`. The broker runs as one JVM
(combined broker + controller) on 127.0.0.1, with its storage formatted in a data directory
of its own. Readiness is a real metadata request, not a sleep.

A broker may also get a SASL_SSL listener (TLS with a PEM keystore, SCRAM-SHA-512 users
created when its storage is formatted), so the tests can run every client through the
security a production cluster has; its own traffic stays on loopback PLAINTEXT.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sluice.errors import SluiceError
from sluice.kafka.clients import BrokerErrors, admin_config
from sluice.kafka.security import PLAINTEXT, KafkaSecurity

# Package data, so an installed `sluice up` finds them as a checkout does.
_DATA = Path(__file__).resolve().parent / "data"
POM = _DATA / "pom.xml"
LOG4J_CONFIG = _DATA / "log4j2.yaml"
KAFKA_MAIN = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"


class LocalStackError(SluiceError):
    """The local broker could not be fetched, formatted, started or stopped."""


def _require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise LocalStackError(
            "java not found on PATH: the local Kafka broker needs a Java 17+ runtime "
            "(Debian: apt-get install openjdk-17-jre-headless)"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major < 17:
        raise LocalStackError(
            f"java at {java} is version {major or 'unknown'}; Kafka 4.x needs Java 17+ "
            "(Debian: apt-get install openjdk-17-jre-headless)"
        )
    return java


def fetch_kafka_jars(cache_dir: Path, *, quiet: bool = True) -> Path:
    """Download the broker jars into `cache_dir/kafka/libs` unless they are there already.

    Returns the libs folder. The first run takes about half a minute (~45 MB); later runs
    return at once. A stamp file records the pom it came from, so a version bump refetches.
    """
    libs = cache_dir / "kafka" / "libs"
    stamp = libs / ".pom-stamp"
    pom_text = POM.read_text()
    if stamp.exists() and stamp.read_text() == pom_text and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalStackError(
            "mvn not found on PATH: Sluice fetches the Kafka broker from Maven Central with "
            "Maven (Debian: apt-get install maven)"
        )
    _require_java()
    if libs.exists():
        shutil.rmtree(libs)
    libs.mkdir(parents=True)
    cmd = [mvn, "-B", "-f", str(POM), "dependency:copy-dependencies",
           f"-DoutputDirectory={libs}", "-DincludeScope=runtime"]
    if quiet:
        cmd.insert(1, "-q")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LocalStackError(f"mvn could not fetch the Kafka jars (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    stamp.write_text(pom_text)
    return libs


# Characters that would end a value in the storage tool's `--add-scram` syntax.
_SCRAM_SYNTAX = re.compile(r'[,\[\]="\s]')


@dataclass(frozen=True)
class SaslSslListener:
    """A listener on `port` that only takes TLS with SCRAM-SHA-512 authentication.

    `keystore` is a PEM file holding the broker's private key (PKCS#8, unencrypted) and its
    certificate chain; the certificate must name the broker's host (127.0.0.1) as a subject
    alternative name, since clients verify it. `users` maps SCRAM user names to passwords;
    they are created when the storage is formatted, so they exist before the first client.
    """

    port: int
    keystore: Path
    users: Mapping[str, str]

    def __post_init__(self) -> None:
        if not self.keystore.is_file():
            raise LocalStackError(f"the SASL_SSL keystore {self.keystore} is not a file: expected a PEM file "
                                  "with the broker's private key and certificate chain")
        if not self.users:
            raise LocalStackError("a SASL_SSL listener needs at least one SCRAM user, or no client could connect to it")
        for name, password in self.users.items():
            if not name or not password or _SCRAM_SYNTAX.search(name + password):
                raise LocalStackError(f"SCRAM user {name!r}: name and password must be non-empty, without "
                                      "spaces, commas, brackets, quotes or '=' (kafka-storage --add-scram syntax)")

    def properties(self) -> list[str]:
        """The server.properties lines of this listener (named SASL_SSL)."""
        return [
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.keystore}",
        ]

    def scram_arguments(self) -> list[str]:
        """The storage tool's arguments that create the users at format time."""
        args = []
        for name, password in sorted(self.users.items()):
            args += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
        return args


@dataclass
class KafkaBroker:
    """One local KRaft broker. `start()` formats (once) and launches it; `stop()` ends it.

    `data_dir` holds the log dirs, the generated `server.properties`, the broker's own log
    file and a `broker.pid` file, so `make down` can stop a broker started by `make up`.
    """

    data_dir: Path
    cache_dir: Path
    port: int = 9092
    controller_port: int = 9093
    host: str = "127.0.0.1"
    heap: str = "512m"
    sasl_ssl: SaslSslListener | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def sasl_ssl_bootstrap(self) -> str:
        """host:port of the SASL_SSL listener; a `LocalStackError` if the broker has none."""
        if self.sasl_ssl is None:
            raise LocalStackError(f"the broker in {self.data_dir} was configured without a SASL_SSL listener")
        return f"{self.host}:{self.sasl_ssl.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    def _properties(self) -> str:
        logs = self.data_dir / "kraft-logs"
        listeners = [f"PLAINTEXT://{self.host}:{self.port}"]
        protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
        secured: list[str] = []
        if self.sasl_ssl is not None:
            listeners.append(f"SASL_SSL://{self.sasl_ssl_bootstrap}")
            protocols += ",SASL_SSL:SASL_SSL"
            secured = self.sasl_ssl.properties()
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers={self.host}:{self.controller_port}",
            f"listeners={','.join(listeners)},CONTROLLER://{self.host}:{self.controller_port}",
            f"advertised.listeners={','.join(listeners)}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"listener.security.protocol.map={protocols}",
            *secured,
            f"log.dirs={logs}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            # A single local node: new consumer groups should not wait 3 s for more members.
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "",
        ])

    def _java_cmd(self, main: str, *args: str) -> list[str]:
        java = _require_java()
        libs = fetch_kafka_jars(self.cache_dir)
        return [
            java, f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1",  # C1 only: starts faster; a local broker is never CPU-bound on JIT
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp", str(libs / "*"), main, *args,
        ]

    def _format(self) -> None:
        props = self.data_dir / "server.properties"
        props.write_text(self._properties())
        meta = self.data_dir / "kraft-logs" / "meta.properties"
        if meta.exists():
            return
        cluster_id = _kafka_uuid()
        # "--cluster-id=ID" in one argument: an id may start with "-", which argparse would
        # otherwise take for an option (1 run in 64 failed that way).
        scram = self.sasl_ssl.scram_arguments() if self.sasl_ssl is not None else []
        cmd = self._java_cmd(STORAGE_TOOL, "format", "--standalone", f"--cluster-id={cluster_id}", "-c", str(props), *scram)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise LocalStackError(f"kafka-storage format failed (exit {proc.returncode}): {proc.stdout}{proc.stderr}")

    def start(self, *, timeout_s: float = 60.0) -> float:
        """Format storage if needed, launch the JVM, and wait until the broker answers a
        metadata request. Returns the seconds from launch to ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.pid_file.exists() and _alive(int(self.pid_file.read_text())):
            raise LocalStackError(f"a broker started from {self.data_dir} is already running (pid {self.pid_file.read_text().strip()})")
        self._format()
        cmd = self._java_cmd(KAFKA_MAIN, str(self.data_dir / "server.properties"))
        started = time.monotonic()
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid_file.write_text(str(self.process.pid))
        try:
            wait_until_ready(self.bootstrap, timeout_s=timeout_s, process=self.process)
        except BaseException:  # not ready, or interrupted (Ctrl-C, SIGTERM) while waiting: leave nothing behind
            self.stop()
            raise
        return time.monotonic() - started

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Stop the broker by pid: SIGTERM (clean shutdown), then SIGKILL after `timeout_s`."""
        pid = self.process.pid if self.process else _read_pid(self.pid_file)
        if pid is not None:
            stop_pid(pid, timeout_s=timeout_s, process=self.process)
        self.pid_file.unlink(missing_ok=True)
        self.process = None


def stop_pid(pid: int, *, timeout_s: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM `pid`, wait for it to exit, SIGKILL it if it does not within `timeout_s`."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return
        elif not _alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if process is not None:
        process.wait(timeout=10)


def wait_until_ready(bootstrap: str, *, security: KafkaSecurity = PLAINTEXT, timeout_s: float = 60.0,
                     process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `bootstrap` with metadata requests until a broker answers, or fail naming why."""
    from confluent_kafka.admin import AdminClient  # deferred: keep `sluice --help` fast

    # log_level 2: "connection refused" until the broker listens is the expected answer here.
    errors = BrokerErrors()
    admin = AdminClient(admin_config(bootstrap, security, error_cb=errors,
                                     **{"socket.connection.setup.timeout.ms": 1000, "log_level": 2}))
    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None and process.poll() is not None:
            raise LocalStackError(f"the Kafka broker exited with code {process.returncode} before it was ready")
        try:
            md = admin.list_topics(timeout=1.0)
            if md.brokers:
                return
        except Exception:  # noqa: BLE001 - any failure here just means "not ready yet"
            pass
        if time.monotonic() > deadline:
            cause = errors.explain(admin)
            raise LocalStackError(f"no Kafka broker answered a metadata request at {bootstrap} "
                                  f"(security protocol {security.protocol}) within {timeout_s:.0f} s"
                                  f"{': ' + cause if cause else ''}")
        time.sleep(0.1)


def free_loopback_ports(n: int) -> list[int]:
    """`n` distinct free ports on 127.0.0.1 (all held open while choosing, so none repeats)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _kafka_uuid() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) still answers kill(0); look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except (FileNotFoundError, IndexError):
        return False
