"""`sluice sink`: run the ClickHouse sink in the foreground."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import click

from sluice.cli._common import kafka_or_fail, settings, sluice_errors


def offline_evaluation_every(client: Any, database: str, hours: float) -> list[tuple[float, Callable[[], None]]]:
    """The sink's periodic job: the continuous offline evaluation every `hours` (0: none),
    run by whichever process holds the ClickHouse sink (`sluice sink`, or `sluice api` on
    the embedded engine)."""
    if hours <= 0:
        return []
    import time

    from sluice.analytics.offline import run_continuous

    def evaluate() -> None:
        n = run_continuous(client, database, now_ms=int(time.time() * 1000))
        click.echo(f"sink: offline evaluation wrote {n} rows", err=True)

    return [(hours * 3600, evaluate)]


@click.command()
@click.option("--prefix", default="sluice", show_default=True, help="Topic name prefix.")
@click.option("--database", default="sluice", show_default=True, help="ClickHouse database.")
@click.option("--batch-max", type=click.IntRange(min=1), default=50_000, show_default=True, help="Most messages per batch.")
@click.option("--instance-id", envvar="SLUICE_INSTANCE_ID", default=None,
              help="Static group member id: a sink restarted with the same id resumes at once. Unique per running sink.")
@click.option("--stop-when-idle", type=float, default=None, metavar="SECONDS", help="Exit after this long without a message.")
@click.option("--evaluate-every-hours", type=click.FloatRange(min=0), default=24.0, show_default=True,
              help="Run the continuous offline evaluation of every running experiment this often (0: never); "
                   "rows go to the offline_evaluations table.")
@sluice_errors
def sink(prefix: str, database: str, batch_max: int, instance_id: str | None, stop_when_idle: float | None,
         evaluate_every_hours: float) -> None:
    """Copy serves, rewards, weight tables, alerts, decisions, experiment specs, the control
    API's audit log and the model registry's changes from Kafka into ClickHouse, and run the
    continuous offline evaluation on its schedule.

    Stops cleanly on SIGTERM or Ctrl-C; a kill at any moment loses and duplicates nothing.
    """
    from sluice.avro import SchemaSet, SingleObjectSerde
    from sluice.clickhouse import connect, migrate
    from sluice.kafka import TopicNames
    from streams.sink.sink import ClickHouseSink

    s = settings()
    bootstrap, security = kafka_or_fail(s)
    client = connect(s.clickhouse_url, path=s.chdb_path)
    migrate(client, database=database, ttl_days=s.sluice_clickhouse_ttl_days)
    runner = ClickHouseSink(bootstrap, client, SingleObjectSerde(SchemaSet.bundled()),
                            TopicNames(prefix), security=security, database=database, batch_max=batch_max, instance_id=instance_id)
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    click.echo(f"sink: {prefix}.* -> {database} on {s.clickhouse_url or s.chdb_path}", err=True)
    try:
        runner.run(stop_when_idle_s=stop_when_idle, every=offline_evaluation_every(client, database, evaluate_every_hours))
    except KeyboardInterrupt:
        pass
    click.echo(f"sink: stopped after {runner.counts.messages} messages, {runner.counts.rows_inserted} rows, "
               f"{runner.counts.dead_letters} dead letters", err=True)
