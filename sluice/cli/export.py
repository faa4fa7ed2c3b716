"""`sluice export`: a per-entity evaluation dataset (one row per serve) as parquet or csv."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from sluice.cli._common import settings, sluice_errors


@click.command("export")
@click.option("--experiment", required=True)
@click.option("--entity", default=None, help="Only this entity.")
@click.option("--since", type=click.DateTime(), default=None, help="Serves at or after this time (UTC).")
@click.option("--until", type=click.DateTime(), default=None, help="Serves before this time (UTC).")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--database", default="sluice", show_default=True)
@click.option("--attribution-hours", type=click.FloatRange(min=0, min_open=True), default=24.0, show_default=True)
@click.option("--continuous", is_flag=True, help="Sum a serve's rewards (default: binary, 1 if any reward was 1).")
@sluice_errors
def export_(experiment: str, entity: str | None, since: datetime | None, until: datetime | None, fmt: str,
            output: Path, database: str, attribution_hours: float, continuous: bool) -> None:
    """One row per serve: time, unit, arm, propensity, weight-table version, context and
    the reward attributed to it (docs/evaluation-dataset.md). The same rows however many
    times the events were delivered."""
    from datetime import timezone

    from sluice.analytics.export import export
    from sluice.clickhouse import connect

    s = settings()
    client = connect(s.clickhouse_url, path=s.chdb_path)
    try:
        n = export(client, experiment, output, fmt, database=database, entity=entity,
                   since=since.replace(tzinfo=timezone.utc) if since else None,
                   until=until.replace(tzinfo=timezone.utc) if until else None,
                   attribution_hours=attribution_hours, binary=not continuous)
    finally:
        client.close()
    click.echo(f"{n:,} rows -> {output}")
