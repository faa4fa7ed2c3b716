"""Real parts for benchmarks: a Kafka broker (KAFKA_BOOTSTRAP, or a temporary local one)
and an embedded ClickHouse in a temporary directory."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sluice.config import Settings


@contextlib.contextmanager
def kafka() -> Iterator[str]:
    """A bootstrap address for the duration of the block; a broker started here is stopped after it."""
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    from sluice.local.kafka import KafkaBroker, free_loopback_ports

    port, controller = free_loopback_ports(2)
    with tempfile.TemporaryDirectory(prefix="sluice-bench-kafka-") as data:
        broker = KafkaBroker(data_dir=Path(data), cache_dir=Settings().sluice_cache, port=port, controller_port=controller, heap="1g")
        broker.start()
        try:
            yield broker.bootstrap
        finally:
            broker.stop()
