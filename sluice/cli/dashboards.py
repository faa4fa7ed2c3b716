"""`sluice dashboards push`: provision Sluice's data sources and dashboards to a Grafana."""

from __future__ import annotations

import json
import os

import click

from sluice.config import checkout_root


@click.group()
def dashboards() -> None:
    """Grafana dashboards of Sluice (dashboards/*.json)."""


@dashboards.command()
@click.option("--grafana-url", envvar="GRAFANA_URL", default=None, help="Grafana base URL [env GRAFANA_URL].")
@click.option("--clickhouse-url", envvar="GRAFANA_CLICKHOUSE_HOST", default="clickhouse", show_default=True,
              help="ClickHouse host as Grafana reaches it [env GRAFANA_CLICKHOUSE_HOST].")
@click.option("--prometheus-url", envvar="GRAFANA_PROMETHEUS_URL", default="http://prometheus:9090", show_default=True,
              help="Prometheus URL as Grafana reaches it [env GRAFANA_PROMETHEUS_URL].")
def push(grafana_url: str | None, clickhouse_url: str, prometheus_url: str) -> None:
    """Create or update the two data sources (by uid) and the dashboards (overwrite). The
    credential comes from GRAFANA_TOKEN (a service-account token) or GRAFANA_USER and
    GRAFANA_PASSWORD."""
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaClientError

    root = checkout_root()
    if root is None:  # the dashboards are built files of the repository, not package data
        raise click.ClickException("`sluice dashboards push` reads dashboards/*.json of a Sluice source checkout: run it from one")
    if not grafana_url:
        raise click.ClickException("no Grafana: set GRAFANA_URL (and GRAFANA_TOKEN, or GRAFANA_USER and GRAFANA_PASSWORD)")
    token = os.environ.get("GRAFANA_TOKEN")
    user, password = os.environ.get("GRAFANA_USER"), os.environ.get("GRAFANA_PASSWORD")
    if not token and not (user and password):
        raise click.ClickException("no Grafana credential: set GRAFANA_TOKEN, or GRAFANA_USER and GRAFANA_PASSWORD")
    api = GrafanaApi.from_url(grafana_url, credential=token or (user, password))
    sources = [
        {"uid": "sluice-clickhouse", "name": "Sluice ClickHouse", "type": "grafana-clickhouse-datasource",
         "access": "proxy", "jsonData": {"host": clickhouse_url, "port": 9000, "protocol": "native",
                                         "defaultDatabase": "sluice"}},
        {"uid": "sluice-prometheus", "name": "Sluice Prometheus", "type": "prometheus", "access": "proxy",
         "url": prometheus_url, "jsonData": {"timeInterval": "5s"}},
    ]
    try:
        for source in sources:
            try:
                api.datasource.get_datasource_by_uid(source["uid"])
                api.datasource.update_datasource_by_uid(source["uid"], source)
                click.echo(f"updated data source {source['uid']}")
            except GrafanaClientError as exc:
                if getattr(exc, "status_code", None) != 404:
                    raise
                api.datasource.create_datasource(source)
                click.echo(f"created data source {source['uid']}")
        for path in sorted((root / "dashboards").glob("*.json")):
            board = json.loads(path.read_text())
            api.dashboard.update_dashboard({"dashboard": board, "overwrite": True, "message": "sluice dashboards push"})
            click.echo(f"pushed dashboard {board['uid']} ({path.name})")
    except GrafanaClientError as exc:
        raise click.ClickException(f"Grafana at {grafana_url} refused: {exc}") from None
