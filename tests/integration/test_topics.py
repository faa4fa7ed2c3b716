"""`sluice topics create`: idempotent, and loud about a topic that exists with other settings."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from sluice.cli import main
from sluice.kafka import TopicConflictError, TopicNames, ensure_topics, topic_specs

pytestmark = pytest.mark.integration


def describe(bootstrap: str, names: list[str]) -> dict[str, tuple[int, dict[str, str]]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(timeout=10)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names]
    configs = {r.name: f.result() for r, f in admin.describe_configs(resources).items()}
    return {n: (len(md.topics[n].partitions), {k: v.value for k, v in configs[n].items()}) for n in names}


def test_create_twice_gives_the_same_topics_with_the_defined_settings(kafka_bootstrap: str, topic_prefix: str) -> None:
    runner = CliRunner()
    env = {"KAFKA_BOOTSTRAP": kafka_bootstrap}
    first = runner.invoke(main, ["topics", "create", "--prefix", topic_prefix, "--partitions", "3"], env=env)
    assert first.exit_code == 0, first.output
    assert first.output.count("created") == len(topic_specs())
    names = [s.name for s in topic_specs(TopicNames(topic_prefix), partitions=3)]
    before = describe(kafka_bootstrap, names)

    second = runner.invoke(main, ["topics", "create", "--prefix", topic_prefix, "--partitions", "3"], env=env)
    assert second.exit_code == 0, second.output
    assert second.output.count("unchanged") == len(topic_specs()) and "created" not in second.output
    assert describe(kafka_bootstrap, names) == before

    weights = TopicNames(topic_prefix).weights
    assert before[weights][1]["cleanup.policy"] == "compact"
    assert before[TopicNames(topic_prefix).serves][1]["cleanup.policy"] == "delete"
    assert before[TopicNames(topic_prefix).serves][0] == 3


def test_an_existing_topic_with_other_settings_is_reported_not_used(kafka_bootstrap: str, topic_prefix: str) -> None:
    names = TopicNames(topic_prefix)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    # Someone made the weights topic by hand, without compaction and with 2 partitions.
    admin.create_topics([NewTopic(names.weights, num_partitions=2, replication_factor=1, config={"cleanup.policy": "delete"})])[names.weights].result()

    with pytest.raises(TopicConflictError) as err:
        ensure_topics(kafka_bootstrap, topic_specs(names, partitions=3))
    message = str(err.value)
    assert names.weights in message
    assert "cleanup.policy=delete, expected compact" in message
    assert "partitions 2, expected 3" in message
    # Nothing was created while the conflict stood.
    assert names.serves not in admin.list_topics(timeout=10).topics

    result = CliRunner().invoke(main, ["topics", "create", "--prefix", topic_prefix, "--partitions", "3"], env={"KAFKA_BOOTSTRAP": kafka_bootstrap})
    assert result.exit_code == 1
    assert "cleanup.policy=delete, expected compact" in result.output
