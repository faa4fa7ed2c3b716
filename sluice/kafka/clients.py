"""Configuration of confluent-kafka producers and consumers, in one place.

Producers partition with `murmur2_random`, the Java client's and aiokafka's partitioner, so
a key lands in the same partition whichever client wrote it (librdkafka's default, CRC32,
places keys elsewhere) — Faust tables and co-partitioned serves and rewards rely on it.

Every client's properties start from its `KafkaSecurity`, which is a required argument here
so that no client can be built without deciding how it authenticates.
"""

from __future__ import annotations

from typing import Any

from sluice.kafka.security import KafkaSecurity

KEY_SEPARATOR = "\x1f"  # ASCII unit separator: cannot appear in ids typed by people


def entity_key(experiment_id: str, entity: str) -> bytes:
    """The Kafka key of serves, rewards and weight tables of one (experiment, entity).

    A reward producer must use the key of its serve, which this function gives from the
    serve's experiment id and entity; then serve and reward share a partition.
    """
    return f"{experiment_id}{KEY_SEPARATOR}{entity}".encode()


def producer_config(bootstrap: str, security: KafkaSecurity, **overrides: Any) -> dict[str, Any]:
    """A durable producer: idempotent, acks=all, batched, murmur2 partitioning."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        **security.client_properties(),
        "partitioner": "murmur2_random",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
    }
    config.update(overrides)
    return config


def consumer_config(bootstrap: str, group_id: str, security: KafkaSecurity, **overrides: Any) -> dict[str, Any]:
    """A consumer that reads from the beginning of new groups and commits explicitly."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        **security.client_properties(),
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
    }
    config.update(overrides)
    return config


def admin_config(bootstrap: str, security: KafkaSecurity, **overrides: Any) -> dict[str, Any]:
    """An admin client (topics, metadata)."""
    return {"bootstrap.servers": bootstrap, **security.client_properties(), **overrides}


class BrokerErrors:
    """The errors librdkafka reports through `error_cb`, to explain a failed request.

    A refused client sees only "Broker transport failure" in the exception it gets; the
    cause (a SASL authentication failure, a certificate that does not verify) comes through
    `error_cb`, which runs when the client is polled. Pass an instance as `error_cb`, and
    `explain(client)` after a failure.
    """

    def __init__(self) -> None:
        self._errors: list[Any] = []

    def __call__(self, error: Any) -> None:
        self._errors.append(error)

    def explain(self, client: Any) -> str:
        """The most telling error reported so far ("" if none): the first that is not just
        "all brokers are down", which only repeats that the request failed."""
        from confluent_kafka import KafkaError

        client.poll(0)  # serves the error callbacks queued by the failed request
        telling = [e for e in self._errors if e.code() != KafkaError._ALL_BROKERS_DOWN]
        chosen = (telling or self._errors)[:1]
        return chosen[0].str() if chosen else ""
