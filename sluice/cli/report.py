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
@click.option("--attribution-hours", type=click.FloatRange(min=0, min_open=True), default=24.0, show_default=True,
              help="Rewards this long after their serve count (the experiment's attribution window).")
@sluice_errors
def report(experiment: str, output: Path | None, database: str, attribution_hours: float) -> None:
    """Plots (weights, reward per arm with intervals, P(best), regret) and statistics (tests,
    intervals, SRM, naive and propensity-weighted means) with the decision, per entity."""
    from rich.progress import Progress

    from sluice.analytics.report import write_report
    from sluice.clickhouse import connect

    s = settings()
    client = connect(s.clickhouse_url, path=s.chdb_path)
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task("report", total=None)
            out = write_report(client, experiment, output or Path(f"report-{experiment}.html"), database=database,
                               attribution_hours=attribution_hours,
                               progress=lambda entity: progress.update(task, description=f"entity {entity}"))
    finally:
        client.close()
    click.echo(str(out))
