"""Configuration of confluent-kafka producers and consumers, in one place.

Producers partition with `murmur2_random`, the Java client's and aiokafka's partitioner, so
a key lands in the same partition whichever client wrote it (librdkafka's default, CRC32,
places keys elsewhere) — Faust tables and co-partitioned serves and rewards rely on it.
"""

from __future__ import annotations

from typing import Any

KEY_SEPARATOR = "\x1f"  # ASCII unit separator: cannot appear in ids typed by people


def entity_key(experiment_id: str, entity: str) -> bytes:
    """The Kafka key of serves, rewards and weight tables of one (experiment, entity).

    A reward producer must use the key of its serve, which this function gives from the
    serve's experiment id and entity; then serve and reward share a partition.
    """
    return f"{experiment_id}{KEY_SEPARATOR}{entity}".encode()


def producer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """A durable producer: idempotent, acks=all, batched, murmur2 partitioning."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "partitioner": "murmur2_random",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
    }
    config.update(overrides)
    return config


def consumer_config(bootstrap: str, group_id: str, **overrides: Any) -> dict[str, Any]:
    """A consumer that reads from the beginning of new groups and commits explicitly."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
    }
    config.update(overrides)
    return config
