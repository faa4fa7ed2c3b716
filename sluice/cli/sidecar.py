"""`sluice sidecar`: the assignment sidecar over HTTP."""

from __future__ import annotations

from pathlib import Path

import click

from sluice.cli._common import kafka_or_fail, settings, sigterm_unwinds, sluice_errors


@click.command()
@click.option("--prefix", default="sluice", show_default=True, help="Topic name prefix.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8088, show_default=True)
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Snapshot of the tables and the serve spill file [default: SLUICE_HOME/sidecar-<prefix>].")
@click.option("--ready-timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for the full read of the topics before serving from the snapshot.")
@sluice_errors
def sidecar(prefix: str, host: str, port: int, state_dir: Path | None, ready_timeout: float) -> None:
    """Serve assignments, parameter values and reward logging over HTTP (JSON; the API is in
    services/assignment/openapi.yaml). Never waits on Kafka: while it is unreachable,
    answers come from the last snapshot and serves wait in a spill file. With
    SLUICE_SIDECAR_TOKEN set, logging a reward needs it as a bearer token."""
    import uvicorn

    from services.assignment.app import SidecarApp
    from sluice.client.sdk import SluiceClient

    # uvicorn re-raises the SIGTERM it caught once it has shut down; make that unwind to
    # the `finally` below, which delivers or spills the logged serves before exiting.
    sigterm_unwinds()
    s = settings()
    if s.sluice_sidecar_token is not None and not s.sluice_sidecar_token.strip():
        raise click.ClickException("SLUICE_SIDECAR_TOKEN is set but empty; set a secret, or unset it to accept "
                                   "rewards without a token")
    bootstrap, security = kafka_or_fail(s)
    client = SluiceClient.connect(bootstrap, security=security, prefix=prefix, state_dir=state_dir or s.sluice_home / f"sidecar-{prefix}",
                                  ready_timeout_s=ready_timeout)
    click.echo(f"sidecar on http://{host}:{port} ({'live' if client.live else 'from snapshot' if client.ready else 'no tables yet'}; "
               f"rewards {'need the token' if s.sluice_sidecar_token else 'need no token'})", err=True)
    try:
        uvicorn.run(SidecarApp(client, reward_token=s.sluice_sidecar_token), host=host, port=port, loop="uvloop",
                    http="httptools", log_level="warning", access_log=False, lifespan="on")
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
