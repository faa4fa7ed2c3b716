"""`sluice up` and `sluice down`: start and stop the local stack."""

from __future__ import annotations

import click

from sluice.cli._common import settings, sluice_errors


@click.command()
@click.option("--prefix", default="sluice", show_default=True, help="Topic name prefix.")
@sluice_errors
def up(prefix: str) -> None:
    """Start the local stack: Kafka broker (unless KAFKA_BOOTSTRAP is set), topics, ClickHouse tables."""
    from sluice.clickhouse import connect, migrate
    from sluice.kafka import TopicNames, ensure_topics, topic_specs
    from sluice.local.stack import start_kafka

    s = settings()
    status = start_kafka(s)
    if status.started_broker:
        click.echo(f"kafka: started broker pid {status.broker_pid} at {status.bootstrap}, ready after {status.ready_after_s:.1f} s")
    elif status.broker_pid:
        click.echo(f"kafka: local broker pid {status.broker_pid} already running at {status.bootstrap}")
    else:
        click.echo(f"kafka: using KAFKA_BOOTSTRAP={status.bootstrap}")
    outcomes = ensure_topics(status.bootstrap, topic_specs(TopicNames(prefix), partitions=s.sluice_topic_partitions),
                             security=status.security, replication_factor=s.sluice_replication_factor)
    click.echo(f"topics: {sum(o == 'created' for o in outcomes.values())} created, {sum(o == 'unchanged' for o in outcomes.values())} unchanged")
    applied = migrate(connect(s.clickhouse_url, path=s.chdb_path), ttl_days=s.sluice_clickhouse_ttl_days)
    click.echo(f"clickhouse: {s.clickhouse_url or s.chdb_path}, migrations applied now: {applied or 'none'}")


@click.command()
@sluice_errors
def down() -> None:
    """Stop the local Kafka broker that `sluice up` started (by its recorded pid)."""
    from sluice.local.stack import stop_kafka

    pid = stop_kafka(settings())
    click.echo(f"kafka: stopped broker pid {pid}" if pid else "kafka: no local broker was running")
