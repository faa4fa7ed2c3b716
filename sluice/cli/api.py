"""`sluice api`: the control API over HTTP."""

from __future__ import annotations

import uuid

import click

from sluice.cli._common import bootstrap_or_fail, settings, sigterm_unwinds, sluice_errors


@click.command()
@click.option("--prefix", default="sluice", show_default=True, help="Topic name prefix.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8090, show_default=True)
@click.option("--instance-id", envvar="SLUICE_INSTANCE_ID", default=None,
              help="Stable id of this API instance, unique among running ones: a restart under the same id "
                   "aborts at once a change a crash left half-written [default: a new one per start].")
@click.option("--ready-timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for the experiments and tokens topics to be read before failing.")
@sluice_errors
def api(prefix: str, host: str, port: int, instance_id: str | None, ready_timeout: float) -> None:
    """Serve the control API: experiments (list, get, create, update, pause, resume, stop,
    reinstate or retire an arm) for holders of a token from `sluice tokens create`; every
    change is published with its audit event. The API is in services/api/openapi.yaml."""
    import uvicorn

    from services.api.app import ApiApp
    from services.api.control import ControlPlane
    from sluice.avro import SchemaSet, SingleObjectSerde
    from sluice.kafka import TopicNames

    sigterm_unwinds()
    control = ControlPlane(bootstrap_or_fail(settings()), SingleObjectSerde(SchemaSet.bundled()), TopicNames(prefix),
                           instance_id=instance_id or uuid.uuid4().hex)
    try:
        control.start(ready_timeout)
        click.echo(f"api on http://{host}:{port}", err=True)
        uvicorn.run(ApiApp(control), host=host, port=port, loop="uvloop", http="httptools", log_level="warning",
                    access_log=False, lifespan="on")
    except KeyboardInterrupt:
        pass
    finally:
        control.close()
