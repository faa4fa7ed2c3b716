"""`sluice topics …`: Sluice's Kafka topics as code."""

from __future__ import annotations

import click

from sluice.cli._common import kafka_or_fail, settings, sluice_errors


@click.group()
def topics() -> None:
    """Kafka topics of Sluice (experiments, serves, rewards, weights, alerts, decisions, dlq)."""


@topics.command()
@click.option("--prefix", default="sluice", show_default=True, help="Topic name prefix (tests use a unique one).")
@click.option("--partitions", type=click.IntRange(min=1), default=None, help="Partitions of keyed event topics [default: SLUICE_TOPIC_PARTITIONS or 6].")
@sluice_errors
def create(prefix: str, partitions: int | None) -> None:
    """Create the topics that are missing. Existing topics that match are left alone;
    ones that differ are reported and nothing is changed (exit 1)."""
    from sluice.kafka import TopicNames, ensure_topics, topic_specs

    s = settings()
    specs = topic_specs(TopicNames(prefix), partitions=partitions or s.sluice_topic_partitions)
    bootstrap, security = kafka_or_fail(s)
    outcomes = ensure_topics(bootstrap, specs, security=security, replication_factor=s.sluice_replication_factor)
    for spec in specs:
        settings_text = ", ".join(f"{k}={v}" for k, v in spec.config.items())
        click.echo(f"{outcomes[spec.name]:9}  {spec.name}  partitions={spec.partitions}  {settings_text}")


@topics.command("list")
@click.option("--prefix", default="sluice", show_default=True)
def list_(prefix: str) -> None:
    """Show the topic definitions (no broker needed)."""
    from sluice.kafka import TopicNames, topic_specs

    for spec in topic_specs(TopicNames(prefix), partitions=settings().sluice_topic_partitions):
        click.echo(f"{spec.name:28} partitions={spec.partitions:<3} {spec.doc}")
