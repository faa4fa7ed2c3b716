"""`sluice report EXPERIMENT`: the self-contained HTML report of an experiment."""

from __future__ import annotations

from pathlib import Path

import click

from sluice.cli._common import settings, sluice_errors


@click.command()
@click.argument("experiment")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write [default: report-EXPERIMENT.html].")
@click.option("--database", default="sluice", show_default=True, help="ClickHouse database the sink writes.")
@sluice_errors
def report(experiment: str, output: Path | None, database: str) -> None:
    """Plots (weights, reward per arm with intervals, P(best), regret) and statistics (tests,
    intervals, SRM, naive and propensity-weighted means) with the decision, per entity.

    Rewards are attributed as the stream worker attributes them, by the experiment's spec
    (reward name and type, attribution window), which the sink lands in ClickHouse."""
    from rich.progress import Progress

    from sluice.analytics.report import write_report
    from sluice.clickhouse import connect

    s = settings()
    client = connect(s.clickhouse_url, path=s.chdb_path)
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task("report", total=None)
            out = write_report(client, experiment, output or Path(f"report-{experiment}.html"), database=database,
                               progress=lambda entity: progress.update(task, description=f"entity {entity}"))
    finally:
        client.close()
    click.echo(str(out))
