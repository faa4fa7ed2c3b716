"""`sluice worker`: run one stream worker (attribution, statistics, weight publication)."""

from __future__ import annotations

from pathlib import Path

import click

from sluice.cli._common import bootstrap_or_fail, settings, sluice_errors


@click.command()
@click.option("--prefix", default="sluice", show_default=True, help="Topic name prefix.")
@click.option("--store", type=click.Choice(["memory", "rocksdb"]), default="memory", show_default=True,
              help="Table store: memory (rebuilt from the changelog at start) or RocksDB on local disk.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where RocksDB tables live [default: SLUICE_HOME/worker-<prefix>].")
@click.option("--publish-interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Seconds between weight publications.")
@click.option("--batch-max", type=click.IntRange(min=1), default=5_000, show_default=True,
              help="Most events per processed batch.")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), envvar="SLUICE_WORKER_METRICS_PORT",
              default=9465, show_default=True, help="Prometheus /metrics port on 127.0.0.1 (0: none).")
@click.option("--metrics-host", envvar="SLUICE_WORKER_METRICS_HOST", default="127.0.0.1", show_default=True,
              help="Address of the /metrics listener (0.0.0.0 in a container).")
@click.option("--web-port", type=click.IntRange(min=1, max=65535), default=None,
              help="Serve Faust's web views of the tables on this loopback port (off by default).")
@click.option("--instance-id", envvar="SLUICE_INSTANCE_ID", default=None,
              help="Static group member id: a worker restarted with the same id resumes without a rebalance. "
                   "Unique per running worker.")
@click.option("--expire-interval", type=click.FloatRange(min=0.05), default=30.0, show_default=True,
              help="Seconds between sweeps that drop serve records past attribution.")
@click.option("--orphan-grace-hours", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Event-time hours a reward waits for its serve before it counts as unknown_serve.")
@click.option("--loglevel", default="warning", show_default=True)
@sluice_errors
def worker(prefix: str, store: str, data_dir: Path | None, publish_interval: float, batch_max: int,
           metrics_port: int, metrics_host: str, web_port: int | None, instance_id: str | None, expire_interval: float,
           orphan_grace_hours: float, loglevel: str) -> None:
    """Attribute rewards to serves, keep windowed per-arm statistics and publish weight tables.

    Reads the serves and rewards topics in the consumer group `<prefix>-worker`: start more
    workers to share the partitions. Stops cleanly on SIGTERM or Ctrl-C; a kill at any moment
    loses and double-counts nothing.
    """
    import faust
    from prometheus_client import CollectorRegistry, start_http_server

    from sluice.kafka import TopicNames, ensure_topics, topic_specs
    from streams.app import Worker, WorkerConfig

    s = settings()
    bootstrap = bootstrap_or_fail(s)
    ensure_topics(bootstrap, topic_specs(TopicNames(prefix), partitions=s.sluice_topic_partitions),
                  replication_factor=s.sluice_replication_factor)
    config = WorkerConfig(
        bootstrap=bootstrap, prefix=prefix, partitions=s.sluice_topic_partitions,
        replication_factor=s.sluice_replication_factor, store=f"{store}://",
        data_dir=data_dir or s.sluice_home / f"worker-{prefix}", publish_interval_s=publish_interval,
        batch_max=batch_max, web_port=web_port, instance_id=instance_id, expire_interval_s=expire_interval,
        orphan_grace_ms=round(orphan_grace_hours * 3_600_000),
    )
    config.data_dir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    registry = CollectorRegistry()
    runner = Worker(config, registry=registry)
    if metrics_port:
        start_http_server(metrics_port, addr=metrics_host, registry=registry)
    runner.specs.start()
    click.echo(f"worker: {prefix}.serves + {prefix}.rewards -> {prefix}.weights (metrics :{metrics_port})", err=True)
    try:
        faust.Worker(runner.app, loglevel=loglevel, quiet=True).execute_from_commandline()
    finally:
        runner.specs.stop()
