"""`sluice experiments …`: publish and manage experiment specs on the compacted topic."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from sluice.cli._common import kafka_or_fail, settings, sluice_errors

if TYPE_CHECKING:
    from sluice.experiments import ExperimentRegistry

PREFIX = click.option("--prefix", default="sluice", show_default=True, help="Topic name prefix.")


def _registry(prefix: str) -> ExperimentRegistry:
    """The registry of the experiments topic of `prefix` on the configured Kafka."""
    from sluice.experiments import ExperimentRegistry

    bootstrap, security = kafka_or_fail(settings())
    return ExperimentRegistry(bootstrap, prefix, security=security)


@click.group()
def experiments() -> None:
    """Experiment specs, live on the compacted experiments topic."""


@experiments.command()
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@PREFIX
@sluice_errors
def apply(spec_file: Path, prefix: str) -> None:
    """Validate SPEC_FILE (YAML) and publish it; workers and sidecars pick it up at once.

    A changed spec without spec_version gets the published one's plus one; one that gives
    spec_version must give a higher one. An unchanged spec publishes nothing.
    """
    from sluice.core.spec import SpecError
    from sluice.specfile import load_spec_file

    try:
        spec = load_spec_file(spec_file)
    except SpecError as exc:
        raise click.ClickException(str(exc)) from None
    with _registry(prefix) as registry:
        outcome, published = registry.apply(spec, explicit_version=_gives_version(spec_file))
    click.echo(f"{outcome}: {published.id} version {published.spec_version} ({published.status})")


def _gives_version(path: Path) -> bool:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return isinstance(data, dict) and "spec_version" in data


@experiments.command("list")
@PREFIX
@sluice_errors
def list_(prefix: str) -> None:
    """Every experiment on the topic, with its status, version, policy and arms."""
    with _registry(prefix) as registry:
        specs = registry.all()
    if not specs:
        click.echo("no experiments")
    for spec in specs:
        click.echo(f"{spec.id:24} {spec.status:8} v{spec.spec_version:<4} {spec.policy.name:15} "
                   f"{', '.join(spec.arm_names)}")


@experiments.command()
@click.argument("experiment_id")
@PREFIX
@sluice_errors
def show(experiment_id: str, prefix: str) -> None:
    """The published spec of EXPERIMENT_ID, as YAML."""
    import yaml

    with _registry(prefix) as registry:
        spec = registry.get(experiment_id)
    click.echo(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), nl=False)


def _status_command(name: str, status: str, doc: str) -> click.Command:
    @click.argument("experiment_id")
    @PREFIX
    @sluice_errors
    def command(experiment_id: str, prefix: str) -> None:
        with _registry(prefix) as registry:
            spec = registry.set_status(experiment_id, status)
        click.echo(f"{spec.id}: {spec.status} (version {spec.spec_version})")

    command.__doc__ = doc
    return experiments.command(name)(command)


_status_command("pause", "paused", "Pause EXPERIMENT_ID: weights freeze, sidecars serve the default arm.")
_status_command("resume", "running", "Resume EXPERIMENT_ID after a pause.")
_status_command("stop", "stopped", "Stop EXPERIMENT_ID for good: the default arm for everyone.")


def _arm_command(name: str, done: str, doc: str) -> click.Command:
    """`sluice experiments reinstate|retire EXPERIMENT_ID ARM [--entity E]`."""

    @click.argument("experiment_id")
    @click.argument("arm")
    @click.option("--entity", default=None, help="Only for this entity [default: every entity].")
    @PREFIX
    @sluice_errors
    def command(experiment_id: str, arm: str, entity: str | None, prefix: str) -> None:
        from sluice.core.spec import SpecError

        with _registry(prefix) as registry:
            try:
                spec = getattr(registry, name)(experiment_id, arm, entity)
            except SpecError as exc:  # e.g. the default arm cannot be retired
                raise click.ClickException(str(exc)) from None
        where = f"entity {entity!r}" if entity else "every entity"
        click.echo(f"{spec.id}: {arm} {done} for {where} (version {spec.spec_version})")

    command.__doc__ = doc
    return experiments.command(name)(command)


_arm_command("reinstate", "reinstated", """Give ARM of EXPERIMENT_ID its traffic back after a health rollback or a
    decision that retired it (for one --entity, or all). Its health evidence starts again from now; the spec's new
    version records who was reinstated and when.""")
_arm_command("retire", "retired", """Take ARM of EXPERIMENT_ID out of traffic (for one --entity, or all): the worker
    holds it at 0 until it is reinstated. The default arm cannot be retired.""")
