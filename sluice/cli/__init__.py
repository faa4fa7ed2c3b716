"""The `sluice` console command. Each subcommand lives in its own module and stays thin:
parse, call the library, print."""

from __future__ import annotations

import click

from sluice.cli.api import api
from sluice.cli.dashboards import dashboards
from sluice.cli.db import db
from sluice.cli.demo import demo, simulate
from sluice.cli.evaluate import evaluate, replay
from sluice.cli.experiments import experiments
from sluice.cli.export import export_
from sluice.cli.models import models
from sluice.cli.report import report
from sluice.cli.sidecar import sidecar
from sluice.cli.sink import sink
from sluice.cli.stack import down, up
from sluice.cli.stats import stats
from sluice.cli.tokens import tokens
from sluice.cli.training import scheduler, trainer
from sluice.cli.topics import topics
from sluice.cli.worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sluice")
def main() -> None:
    """Sluice: streaming A/B tests and multi-armed bandits per entity."""


main.add_command(stats)
main.add_command(db)
main.add_command(topics)
main.add_command(up)
main.add_command(down)
main.add_command(demo)
main.add_command(simulate)
main.add_command(sink)
main.add_command(experiments)
main.add_command(worker)
main.add_command(sidecar)
main.add_command(report)
main.add_command(export_)
main.add_command(dashboards)
main.add_command(evaluate)
main.add_command(replay)
main.add_command(tokens)
main.add_command(models)
main.add_command(scheduler)
main.add_command(trainer)
main.add_command(api)
