"""Shared fixtures. Integration fixtures start real parts once per session:

- `kafka_bootstrap`: `KAFKA_BOOTSTRAP` if set; a testcontainers Kafka when
  `SLUICE_TEST_KAFKA=testcontainers` (needs a Docker engine); otherwise a real local broker
  on free loopback ports in a temporary directory, stopped by pid when the session ends.
- `clickhouse`: the embedded chDB engine in a temporary directory (one per process, as chDB
  requires), or `CLICKHOUSE_URL`'s server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from sluice.avro import SchemaSet, SingleObjectSerde
from sluice.config import project_root
from sluice.local.kafka import free_loopback_ports

ROOT = project_root()

# Property tests draw the same examples on every run (CI runs once: a verdict must not
# depend on which examples chance picked), and keep no example database between runs.
settings.register_profile("sluice", derandomize=True, database=None, deadline=None)
settings.load_profile("sluice")


free_ports = free_loopback_ports


@pytest.fixture(scope="session")
def schemas() -> SchemaSet:
    return SchemaSet.bundled()


@pytest.fixture(scope="session")
def serde(schemas: SchemaSet) -> SingleObjectSerde:
    return SingleObjectSerde(schemas)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    if os.environ.get("SLUICE_TEST_KAFKA") == "testcontainers":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    from sluice.local.kafka import KafkaBroker

    port, controller_port = free_ports(2)
    broker = KafkaBroker(
        data_dir=tmp_path_factory.mktemp("kafka"),
        cache_dir=Path(os.environ.get("SLUICE_CACHE", ROOT / ".cache")),
        port=port,
        controller_port=controller_port,
    )
    broker.start()
    # For tests/integration/test_broker_lifecycle.py, which checks this pid is gone afterwards.
    if os.environ.get("SLUICE_TEST_RECORD_BROKER_PID"):
        with open(os.environ["SLUICE_TEST_RECORD_BROKER_PID"], "a") as f:
            f.write(f"{broker.process.pid if broker.process else ''}\n")
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A prefix no other test uses, so each test has topics of its own."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from sluice.clickhouse import connect

    client = connect(os.environ.get("CLICKHOUSE_URL") or None, path=tmp_path_factory.mktemp("chdb"))
    yield client
    client.close()


@pytest.fixture
def database() -> str:
    """A ClickHouse database name no other test uses."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Any]:
    """A broker of the test's own, for tests that stop and restart it."""
    from sluice.local.kafka import KafkaBroker

    port, controller = free_ports(2)
    broker = KafkaBroker(data_dir=tmp_path / "kafka", cache_dir=Path(os.environ.get("SLUICE_CACHE", project_root() / ".cache")),
                         port=port, controller_port=controller)
    broker.start()
    yield broker
    broker.stop()
