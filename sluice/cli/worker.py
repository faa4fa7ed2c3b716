"""`sluice worker`: run one stream worker (attribution, statistics, weight publication)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import click

from sluice.cli._common import kafka_or_fail, settings, sluice_errors


def _cap_malloc_arenas(arenas: int = 2) -> None:
    """Let glibc keep at most `arenas` malloc arenas (MALLOC_ARENA_MAX, set before the Kafka
    clients start their threads): otherwise each librdkafka thread grows an arena of its own
    and the worker's memory depends on how busy they were, not on its configuration."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).mallopt(-8, arenas)  # -8: M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc: nothing to cap
        pass


@click.command()
@click.option("--prefix", default="sluice", show_default=True, help="Topic name prefix.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where the local state store lives [default: SLUICE_HOME/worker-<prefix>[-<instance id>]]; "
                   "one running worker per directory.")
@click.option("--publish-interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Seconds between weight publications.")
@click.option("--batch-max", type=click.IntRange(min=1), default=5_000, show_default=True,
              help="Most events per processed batch (and per transaction).")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), envvar="SLUICE_WORKER_METRICS_PORT",
              default=9465, show_default=True, help="Prometheus /metrics port on 127.0.0.1 (0: none).")
@click.option("--metrics-host", envvar="SLUICE_WORKER_METRICS_HOST", default="127.0.0.1", show_default=True,
              help="Address of the /metrics listener (0.0.0.0 in a container).")
@click.option("--instance-id", envvar="SLUICE_INSTANCE_ID", default=None,
              help="Static group member id: a worker restarted with the same id resumes without a rebalance. "
                   "Unique per running worker.")
@click.option("--expire-interval", type=click.FloatRange(min=0.05), default=30.0, show_default=True,
              help="Seconds between sweeps that delete serve ids and rewarded serves that aged out.")
@click.option("--decision-interval", type=click.FloatRange(min=0.05), default=30.0, show_default=True,
              help="Seconds between verdicts of one (experiment, entity) (ship / iterate / kill / continue).")
@click.option("--dedup-hours", type=click.FloatRange(min=0), default=24.0, show_default=True,
              help="Event-time hours a serve id is remembered, so that a serve logged twice counts once.")
@click.option("--max-message-bytes", type=click.IntRange(min=16 * 1024), default=512 * 1024, show_default=True,
              help="No message the worker writes (state changelog, weights, decisions, dead letters) is larger.")
@click.option("--loglevel", default="warning", show_default=True)
@sluice_errors
def worker(prefix: str, data_dir: Path | None, publish_interval: float, batch_max: int, metrics_port: int,
           metrics_host: str, instance_id: str | None, expire_interval: float, decision_interval: float,
           dedup_hours: float,
           max_message_bytes: int, loglevel: str) -> None:
    """Attribute rewards to serves, keep windowed per-arm statistics and publish weight tables.

    Reads the serves and rewards topics in the consumer group `<prefix>-worker`: start more
    workers to share the partitions. Stops cleanly on SIGTERM or Ctrl-C; a kill at any moment
    loses and double-counts nothing (each batch is one Kafka transaction).
    """
    import logging

    from prometheus_client import CollectorRegistry, start_http_server

    from sluice.avro import SchemaSet, SingleObjectSerde
    from sluice.kafka import TopicNames, ensure_topics, topic_specs
    from sluice.metrics import StreamMetrics
    from streams.worker import Worker, WorkerConfig

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _cap_malloc_arenas()
    s = settings()
    bootstrap, security = kafka_or_fail(s)
    ensure_topics(bootstrap, topic_specs(TopicNames(prefix), partitions=s.sluice_topic_partitions),
                  security=security, replication_factor=s.sluice_replication_factor)
    config = WorkerConfig(
        bootstrap=bootstrap, security=security, prefix=prefix,
        data_dir=data_dir or s.sluice_home / (f"worker-{prefix}" + (f"-{instance_id}" if instance_id else "")),
        publish_interval_s=publish_interval, batch_max=batch_max, instance_id=instance_id,
        expire_interval_s=expire_interval, decision_interval_s=decision_interval,
        dedup_ms=round(dedup_hours * 3_600_000),
        max_message_bytes=max_message_bytes,
    )
    registry = CollectorRegistry()
    runner = Worker(config, SingleObjectSerde(SchemaSet.bundled()), StreamMetrics.create(registry))
    if metrics_port:
        start_http_server(metrics_port, addr=metrics_host, registry=registry)

    def stop(signum: int, frame: Any) -> None:
        runner.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"worker: {prefix}.serves + {prefix}.rewards -> {prefix}.weights (metrics :{metrics_port})", err=True)
    runner.run()
