"""`sluice db …`: the ClickHouse tables."""

from __future__ import annotations

import click

from sluice.cli._common import settings, sluice_errors


@click.group()
def db() -> None:
    """ClickHouse: the embedded engine under .data/ by default, CLICKHOUSE_URL for a server."""


@db.command()
@click.option("--database", default="sluice", show_default=True)
@click.option("--ttl-days", type=click.IntRange(min=1), default=None, help="Row TTL of event tables [default: SLUICE_CLICKHOUSE_TTL_DAYS or 90].")
@sluice_errors
def migrate(database: str, ttl_days: int | None) -> None:
    """Create or update Sluice's tables; safe to run any number of times."""
    from sluice.clickhouse import connect, migrate as run_migrations

    s = settings()
    client = connect(s.clickhouse_url, path=s.chdb_path)
    applied = run_migrations(client, database=database, ttl_days=ttl_days or s.sluice_clickhouse_ttl_days)
    click.echo(f"{database}: applied {applied}" if applied else f"{database}: up to date")


@db.command()
@click.argument("sql")
@sluice_errors
def query(sql: str) -> None:
    """Run one SQL query and print the rows, tab-separated (for scripts and quick looks).

    With the embedded engine, only one process can open the data at a time: stop the sink
    (or use CLICKHOUSE_URL) first.
    """
    from sluice.clickhouse import connect

    s = settings()
    result = connect(s.clickhouse_url, path=s.chdb_path).query(sql)
    for row in result.result_rows:
        click.echo("\t".join(str(v) for v in row))
