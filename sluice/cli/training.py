"""`sluice scheduler` and `sluice trainer`: what to retrain, and running it."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from sluice.cli._common import kafka_or_fail, settings, sigterm_unwinds, sluice_errors

PREFIX = click.option("--prefix", default="sluice", show_default=True, help="Topic name prefix.")


@click.command()
@click.option("--policies", "policies_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Training policies (YAML): model_types, overrides, grouping, gap_share, assumed_decay.")
@click.option("--every-minutes", type=click.FloatRange(min=0.01), default=60.0, show_default=True,
              help="How often a round plans and sends jobs.")
@click.option("--once", is_flag=True, help="Run one round, print its jobs as JSON and exit.")
@PREFIX
@sluice_errors
def scheduler(policies_path: Path, every_minutes: float, once: bool, prefix: str) -> None:
    """The training scheduler: every round, which models are due, by worth, grouped into
    jobs of similar datasets, sent to the training-jobs topic (a model already in an open
    job is not sent again)."""
    import json

    import yaml

    from sluice.avro import SchemaSet, SingleObjectSerde
    from sluice.core.scheduler import scheduler_config

    from services.scheduler import TrainingScheduler

    try:
        data = yaml.safe_load(policies_path.read_text())
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{policies_path} is not YAML: {exc}") from None
    config = scheduler_config(data if isinstance(data, dict) else {})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    bootstrap, security = kafka_or_fail(settings())
    service = TrainingScheduler(bootstrap, prefix, SingleObjectSerde(SchemaSet.bundled()), config, security=security)
    if once:
        click.echo(json.dumps(service.round()))
        return
    sigterm_unwinds()
    try:
        service.run(every_minutes * 60)
    except KeyboardInterrupt:
        pass


@click.command()
@click.option("--entry", required=True,
              help="What trains a job: module:function (a Python callable taking the job record) or "
                   "command:<shell command> (job JSON on stdin, result JSON on stdout).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Jobs run at once.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--backoff-seconds", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Wait before the second attempt; doubles with each further one.")
@PREFIX
@sluice_errors
def trainer(entry: str, workers: int, max_attempts: int, backoff_seconds: float, prefix: str) -> None:
    """Run training jobs in a local process pool, register the versions they train (which
    enter their entities' experiments as arms), retry failures with backoff."""
    from sluice.avro import SchemaSet, SingleObjectSerde

    from services.trainer import Trainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    bootstrap, security = kafka_or_fail(settings())
    service = Trainer(bootstrap, prefix, SingleObjectSerde(SchemaSet.bundled()), entry, workers=workers,
                      max_attempts=max_attempts, backoff_s=backoff_seconds, security=security)
    sigterm_unwinds()
    try:
        service.run()
    except KeyboardInterrupt:
        pass
