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
@click.option("--feature-set", "feature_sets", multiple=True, metavar="NAME[:VERSION]",
              help="Add a feature set the spec declares as columns fs.<name>.<column> (repeatable; "
                   "docs/feature-sets.md). Without a version, the one the latest spec declares.")
@sluice_errors
def export_(experiment: str, entity: str | None, since: datetime | None, until: datetime | None, fmt: str,
            output: Path, database: str, feature_sets: tuple[str, ...]) -> None:
    """One row per serve: time, unit, arm, propensity, weight-table version, context and
    the reward attributed to it (docs/evaluation-dataset.md). Rewards are attributed as the
    stream worker attributes them, by the experiment's spec (reward name and type,
    attribution window). The same rows however many times the events were delivered.
    A missing parquet feature file is a warning and nulls for its entity and day."""
    from datetime import timezone

    from sluice.analytics.export import export
    from sluice.clickhouse import connect

    s = settings()
    client = connect(s.clickhouse_url, path=s.chdb_path)
    try:
        n = export(client, experiment, output, fmt, feature_sets=feature_sets,
                   on_missing=lambda missing: click.echo(f"warning: {missing}", err=True),
                   database=database, entity=entity,
                   since=since.replace(tzinfo=timezone.utc) if since else None,
                   until=until.replace(tzinfo=timezone.utc) if until else None)
    finally:
        client.close()
    click.echo(f"{n:,} rows -> {output}")
