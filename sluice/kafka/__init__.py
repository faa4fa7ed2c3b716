"""Kafka adapter: topic definitions, admin, and configured confluent-kafka clients.

librdkafka is wrapped here and nowhere else; its errors become `KafkaAdapterError`s.
"""

from sluice.kafka.clients import consumer_config, entity_key, producer_config
from sluice.kafka.exceptions import KafkaAdapterError, KafkaSecurityError, TopicConflictError
from sluice.kafka.security import PLAINTEXT, KafkaSecurity
from sluice.kafka.topics import TopicNames, TopicSpec, ensure_topics, topic_specs

__all__ = [
    "PLAINTEXT",
    "KafkaAdapterError",
    "KafkaSecurity",
    "KafkaSecurityError",
    "TopicConflictError",
    "TopicNames",
    "TopicSpec",
    "consumer_config",
    "ensure_topics",
    "entity_key",
    "producer_config",
    "topic_specs",
]
