"""`sluice api`: the control API over HTTP."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from sluice.cli._common import kafka_or_fail, settings, sigterm_unwinds, sluice_errors

if TYPE_CHECKING:
    from sluice.config import Settings
    from sluice.kafka.security import KafkaSecurity
    from sluice.mlflow import MlflowWebhookReceiver
    from streams.sink.sink import ClickHouseSink

log = logging.getLogger(__name__)


@click.command()
@click.option("--prefix", default="sluice", show_default=True, help="Topic name prefix.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8090, show_default=True)
@click.option("--instance-id", envvar="SLUICE_INSTANCE_ID", default=None,
              help="Stable id of this API instance, unique among running ones: a restart under the same id "
                   "aborts at once a change a crash left half-written [default: a new one per start].")
@click.option("--ready-timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for the experiments and tokens topics to be read before failing.")
@click.option("--results/--no-results", default=True, show_default=True,
              help="Serve results from ClickHouse. On the embedded engine (no CLICKHOUSE_URL) this process then "
                   "runs the ClickHouse sink too, since the engine belongs to one process: run no `sluice sink` "
                   "beside it.")
@click.option("--database", default="sluice", show_default=True, help="ClickHouse database.")
@click.option("--evaluate-every-hours", type=click.FloatRange(min=0), default=24.0, show_default=True,
              help="With the sink in this process: run the continuous offline evaluation this often (0: never).")
@sluice_errors
def api(prefix: str, host: str, port: int, instance_id: str | None, ready_timeout: float, results: bool,
        database: str, evaluate_every_hours: float) -> None:
    """Serve the control API: experiments (list, get, create, update, pause, resume, stop,
    reinstate or retire an arm) for holders of a token from `sluice tokens create`, every
    change published with its audit event; and an entity's results and its weights as of a
    past moment. The API is in services/api/openapi.yaml."""
    import uvicorn

    from services.api.app import ApiApp
    from services.api.control import ControlPlane
    from sluice.avro import SchemaSet, SingleObjectSerde
    from sluice.kafka import TopicNames

    sigterm_unwinds()
    s = settings()
    bootstrap, security = kafka_or_fail(s)
    mlflow_webhook = _mlflow_webhook(s, bootstrap, prefix, security)
    serde = SingleObjectSerde(SchemaSet.bundled())
    names = TopicNames(prefix)
    control = ControlPlane(bootstrap, serde, names, instance_id=instance_id or uuid.uuid4().hex, security=security)
    clickhouse, sink, sink_thread = None, None, None
    try:
        control.start(ready_timeout)
        if results:
            from sluice.cli.sink import offline_evaluation_every
            from sluice.clickhouse import SerializedClient, connect, migrate

            clickhouse = connect(s.clickhouse_url, path=s.chdb_path)
            migrate(clickhouse, database=database, ttl_days=s.sluice_clickhouse_ttl_days)
            if not s.clickhouse_url:
                from streams.sink.sink import ClickHouseSink

                clickhouse = SerializedClient(clickhouse)
                sink = ClickHouseSink(bootstrap, clickhouse, serde, names, security=security, database=database,
                                      instance_id=instance_id and f"{instance_id}-sink")
                sink_thread = threading.Thread(target=_run_sink, name="clickhouse-sink", daemon=True, args=(
                    sink, offline_evaluation_every(clickhouse, database, evaluate_every_hours)))
                sink_thread.start()
        where = "off" if clickhouse is None else f"{database} on {s.clickhouse_url or s.chdb_path}" + \
            (", sink in this process" if sink is not None else "")
        click.echo(f"api on http://{host}:{port} (results: {where})", err=True)
        uvicorn.run(ApiApp(control, clickhouse=clickhouse, database=database, mlflow_webhook=mlflow_webhook),
                    host=host, port=port, loop="uvloop", http="httptools", log_level="warning", access_log=False,
                    lifespan="on")
    except KeyboardInterrupt:
        pass
    finally:
        if sink is not None and sink_thread is not None:
            sink.stop()
            sink_thread.join(30)
        control.close()


def _mlflow_webhook(s: Settings, bootstrap: str, prefix: str, security: KafkaSecurity) -> MlflowWebhookReceiver | None:
    """The MLflow webhook's receiver when SLUICE_MLFLOW_WEBHOOK_SECRET is set (it reads what
    a delivery announces from SLUICE_MLFLOW_TRACKING_URI's server)."""
    if s.sluice_mlflow_webhook_secret is None:
        return None
    from sluice.mlflow import MlflowBridge, MlflowClient, MlflowWebhookReceiver, kafka_registries

    if not s.sluice_mlflow_tracking_uri:
        raise click.ClickException("SLUICE_MLFLOW_WEBHOOK_SECRET is set but SLUICE_MLFLOW_TRACKING_URI is not: the "
                                   "webhook's receiver reads each announced model version from the MLflow server")
    bridge = MlflowBridge(MlflowClient.from_environment(s.sluice_mlflow_tracking_uri),
                          kafka_registries(bootstrap, prefix, security))
    click.echo(f"MLflow webhooks taken at /v1/integrations/mlflow/webhook (models read from "
               f"{s.sluice_mlflow_tracking_uri})", err=True)
    return MlflowWebhookReceiver(s.sluice_mlflow_webhook_secret.get_secret_value(), bridge)


def _run_sink(sink: ClickHouseSink, every: list[tuple[float, Callable[[], None]]]) -> None:
    try:
        sink.run(every=every)
    except Exception:  # noqa: BLE001 - the API goes on answering; its results stop moving, which the log says
        log.exception("the ClickHouse sink inside the API stopped; results no longer move")
