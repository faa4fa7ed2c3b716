"""`sluice demo` (what `make demo` runs) and `sluice simulate`."""

from __future__ import annotations

from pathlib import Path

import click

from sluice.cli._common import settings, sigterm_unwinds, sluice_errors


@click.command()
@click.option("--wall-seconds", type=click.FloatRange(min=5), default=150.0, show_default=True,
              help="How long the simulated two weeks take on the wall clock.")
@click.option("--days", type=click.FloatRange(min=0.1), default=None, help="Simulate this many days instead.")
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the summary as JSON here.")
@click.option("--rates", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Another scenario for the demo's experiments (true rates; see examples/demo/scenario.yaml).")
@click.option("--keep", is_flag=True, help="After the summary, keep the web console and the broker up until Ctrl-C.")
@sluice_errors
def demo(wall_seconds: float, days: float | None, summary_json: Path | None, rates: Path | None, keep: bool) -> None:
    """Run the whole platform on simulated traffic: broker, worker, sink, a Thompson bandit
    and an A/B test, model versions retrained and replaced as arms, live weights, the web
    console, a summary and an HTML report. Stops what it started."""
    from services import demo as demo_run

    sigterm_unwinds()
    options = demo_run.default_options(wall_seconds, days, summary_json, rates)
    options.keep = keep
    demo_run.run(settings(), options)


@click.command()
@click.option("--spec", "specs", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              required=True, help="Experiment spec (YAML); repeat for several.")
@click.option("--rates", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Scenario: true rates per experiment, entity and arm (see examples/demo/scenario.yaml).")
@click.option("--wall-seconds", type=click.FloatRange(min=1), default=150.0, show_default=True)
@click.option("--days", type=click.FloatRange(min=0.1), default=None)
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the summary as JSON here (with every alert and rollback and its simulated day).")
@sluice_errors
def simulate(specs: tuple[Path, ...], rates: Path, wall_seconds: float, days: float | None,
             summary_json: Path | None) -> None:
    """Your own scenario through the whole platform: the demo with your specs and rates
    (phases in the scenario change arms' rates, errors and latency from a day on)."""
    from services import demo as demo_run

    sigterm_unwinds()
    demo_run.run(settings(), demo_run.DemoOptions(list(specs), rates, wall_seconds, days, summary_json))
