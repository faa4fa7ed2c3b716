"""`sluice models …`: the model registry (list, show, register, retire, follow, mlflow-sync)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from typing import TYPE_CHECKING

import click

from sluice.cli._common import kafka_or_fail, settings, sluice_errors

PREFIX = click.option("--prefix", default="sluice", show_default=True, help="Topic name prefix.")
JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")

if TYPE_CHECKING:
    from sluice.mlflow import SyncReport
    from sluice.models import ModelVersion


def _time_ms(value: str | None, name: str) -> int | None:
    """Epoch milliseconds or an ISO 8601 time (UTC unless it says otherwise)."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither epoch milliseconds nor an ISO 8601 time", param_hint=name) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp() * 1000)


def _line(v: ModelVersion) -> str:
    trained = datetime.fromtimestamp(v.trained_at_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")
    metrics = " ".join(f"{k}={x:.4g}" for k, x in sorted(v.metrics.items()))
    return (f"{v.entity}  {v.model_type} v{v.version}  {v.status:9}  trained {trained}  {v.rows:,} rows  "
            f"{v.feature_set}@{v.feature_set_version}  {v.artifact_uri}  {metrics}".rstrip())


@click.group()
def models() -> None:
    """The model registry: every trained version of every model of every entity."""


@models.command("list")
@click.option("--entity", default=None, help="Only this entity's models.")
@click.option("--model-type", default=None, help="Only this model type.")
@PREFIX
@JSON
@sluice_errors
def list_(entity: str | None, model_type: str | None, prefix: str, as_json: bool) -> None:
    """Every version: entity, type, version, status, when trained, on what."""
    from sluice.models import ModelRegistry

    bootstrap, security = kafka_or_fail(settings())
    with ModelRegistry(bootstrap, prefix, security=security) as registry:
        found = registry.all(entity, model_type)
    if as_json:
        click.echo(json.dumps([v.public() for v in found]))
        return
    if not found:
        click.echo("no model versions")
    for v in found:
        click.echo(_line(v))


@models.command()
@click.argument("entity")
@click.argument("model_type")
@click.option("--version", type=click.IntRange(min=1), default=None, help="This version [default: the newest].")
@PREFIX
@JSON
@sluice_errors
def show(entity: str, model_type: str, version: int | None, prefix: str, as_json: bool) -> None:
    """One version of ENTITY's MODEL_TYPE, with the reason of its last change."""
    from sluice.models import ModelRegistry

    bootstrap, security = kafka_or_fail(settings())
    with ModelRegistry(bootstrap, prefix, security=security) as registry:
        v = registry.get(entity, model_type, version)
    if as_json:
        click.echo(json.dumps(v.public()))
        return
    click.echo(_line(v))
    click.echo(f"  arm {v.arm}; data {v.data_start_ms}..{v.data_end_ms} ms; dataset {v.dataset_fingerprint}; "
               f"source {v.source}; last change: {v.reason}")


@models.command()
@click.option("--entity", "entities", multiple=True, required=True,
              help="The entity it was trained for (repeat for a model a group job trained for several).")
@click.option("--model-type", required=True)
@click.option("--version", type=click.IntRange(min=1), default=None,
              help="Its version [default: one above the newest of the model type].")
@click.option("--artifact-uri", required=True, help="Where the trained model is.")
@click.option("--feature-set", required=True, metavar="NAME@VERSION", help="The feature set it was trained on.")
@click.option("--rows", type=click.IntRange(min=0), required=True, help="Rows of training data.")
@click.option("--data-start", required=True, help="First event time of the training data (ISO 8601 or epoch ms).")
@click.option("--data-end", required=True, help="Last event time of the training data.")
@click.option("--trained-at", default=None, help="When training finished [default: now].")
@click.option("--fingerprint", required=True, help="Fingerprint of the training dataset (e.g. sha256:…).")
@click.option("--metric", "metrics", multiple=True, metavar="NAME=VALUE", help="An offline metric (repeat).")
@click.option("--source", default="cli", show_default=True, help="Who registers it (cli, trainer, mlflow…).")
@PREFIX
@JSON
@sluice_errors
def register(entities: tuple[str, ...], model_type: str, version: int | None, artifact_uri: str, feature_set: str,
             rows: int, data_start: str, data_end: str, trained_at: str | None, fingerprint: str,
             metrics: tuple[str, ...], source: str, prefix: str, as_json: bool) -> None:
    """Register a trained version; it enters, as an arm of its entities, every running
    experiment whose spec takes its model type (`models:` in the spec)."""
    import time

    from sluice.core.lifecycle import next_arm_version
    from sluice.experiments import ExperimentRegistry
    from sluice.models import ModelRegistry, ModelVersion, register_and_offer

    name, sep, fs_version = feature_set.rpartition("@")
    if not sep or not name or not fs_version:
        raise click.BadParameter(f"{feature_set!r} is not NAME@VERSION", param_hint="--feature-set")
    parsed: dict[str, float] = {}
    for m in metrics:
        key, sep, value = m.partition("=")
        try:
            parsed[key] = float(value)
        except ValueError:
            raise click.BadParameter(f"{m!r} is not NAME=NUMBER", param_hint="--metric") from None
        if not sep or not key:
            raise click.BadParameter(f"{m!r} is not NAME=NUMBER", param_hint="--metric")
    bootstrap, security = kafka_or_fail(settings())
    with ModelRegistry(bootstrap, prefix, security=security) as registry, \
            ExperimentRegistry(bootstrap, prefix, security=security) as experiments:
        number = version or max(registry.next_version(model_type), next_arm_version(experiments.all(), model_type))
        done, entered = register_and_offer(registry, experiments, [ModelVersion(
            entity, model_type, number, _time_ms(trained_at, "--trained-at") or int(time.time() * 1000),
            _time_ms(data_start, "--data-start") or 0, _time_ms(data_end, "--data-end") or 0, rows, fingerprint, name,
            fs_version, artifact_uri, parsed, source=source) for entity in entities])
    if as_json:
        click.echo(json.dumps({"versions": [v.public() for v in done], "entered": [c.text for c in entered]}))
        return
    for v in done:
        click.echo(f"registered {v.entity}/{v.model_type} v{v.version} ({v.status})")
    for line in [c.text for c in entered] or ["no experiment takes this model type (a spec's `models:` section)"]:
        click.echo(f"  {line}")


@models.command()
@click.argument("entity")
@click.argument("model_type")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--reason", required=True, help="Why it is retired (recorded in the registry).")
@PREFIX
@JSON
@sluice_errors
def retire(entity: str, model_type: str, version: int, reason: str, prefix: str, as_json: bool) -> None:
    """Retire VERSION of ENTITY's MODEL_TYPE: it leaves that entity's arms in every experiment."""
    from sluice.experiments import ExperimentRegistry
    from sluice.models import ModelRegistry, withdraw

    bootstrap, security = kafka_or_fail(settings())
    with ModelRegistry(bootstrap, prefix, security=security) as registry, \
            ExperimentRegistry(bootstrap, prefix, security=security) as experiments:
        v = registry.set_status(entity, model_type, version, "retired", reason)
        left = withdraw(experiments, v)
    if as_json:
        click.echo(json.dumps({"version": v.public(), "left": [c.text for c in left]}))
        return
    click.echo(f"retired {v.entity}/{v.model_type} v{v.version}: {reason}")
    for c in left:
        click.echo(f"  {c.text}")


@models.command()
@PREFIX
@sluice_errors
def follow(prefix: str) -> None:
    """Keep the registry in step with decisions (a long-running service): a version whose
    arm a decision retired, or that a newer winner of its type replaced, is retired and
    leaves its entity's arms. Stops on SIGTERM or Ctrl-C."""
    import logging

    from sluice.avro import SchemaSet, SingleObjectSerde
    from sluice.cli._common import sigterm_unwinds

    from services.lifecycle import LifecycleFollower

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sigterm_unwinds()
    bootstrap, security = kafka_or_fail(settings())
    follower = LifecycleFollower(bootstrap, prefix, SingleObjectSerde(SchemaSet.bundled()), security=security)
    try:
        follower.run()
    except KeyboardInterrupt:
        pass


@models.command("mlflow-sync")
@click.option("--tracking-uri", envvar="SLUICE_MLFLOW_TRACKING_URI", required=True,
              help="http(s)://host:port of the MLflow tracking server [env SLUICE_MLFLOW_TRACKING_URI]. Credentials "
                   "come from MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.")
@click.option("--every", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds between two syncs.")
@click.option("--once", is_flag=True, help="Sync once and exit (exit 1 if MLflow or Kafka cannot be read).")
@click.option("--model", "names", multiple=True,
              help="Only this registered model (repeat) [default: every registered model].")
@click.option("--serving-alias", "serving_aliases", multiple=True, default=("champion", "serving"),
              show_default=True, help="An MLflow alias that means the version is serving (repeat).")
@PREFIX
@JSON
@sluice_errors
def mlflow_sync(tracking_uri: str, every: float, once: bool, names: tuple[str, ...],
                serving_aliases: tuple[str, ...], prefix: str, as_json: bool) -> None:
    """Register in Sluice the model versions of an MLflow Model Registry, and keep their
    status in step with the model's aliases. A registered model's name is the model type;
    a version needs tags sluice.entity, sluice.feature_set (NAME@VERSION),
    sluice.data_start, sluice.data_end, and sluice.rows and sluice.dataset_fingerprint unless
    its run logged a dataset input (README: MLflow). A version without them is skipped with
    a warning naming what is missing. Registering is idempotent: a version already
    registered is not registered again. Runs until SIGTERM or Ctrl-C unless --once."""
    import logging
    import time

    from sluice.cli._common import sigterm_unwinds
    from sluice.errors import SluiceError
    from sluice.mlflow import MlflowBridge, MlflowClient, kafka_registries

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    bootstrap, security = kafka_or_fail(settings())
    bridge = MlflowBridge(MlflowClient.from_environment(tracking_uri), kafka_registries(bootstrap, prefix, security),
                          models=names or None, serving_aliases=serving_aliases)
    if once:
        _print_sync(bridge.sync(), as_json)
        return
    sigterm_unwinds()
    try:
        while True:
            started = time.monotonic()
            try:
                _print_sync(bridge.sync(), as_json, quiet=True)
            except SluiceError as exc:  # MLflow or Kafka away for a while: said, and tried again next round
                logging.getLogger(__name__).warning("MLflow sync failed, next try in %.0f s: %s", every, exc)
            time.sleep(max(0.0, every - (time.monotonic() - started)))
    except KeyboardInterrupt:
        pass


def _print_sync(report: SyncReport, as_json: bool, *, quiet: bool = False) -> None:
    """One sync's report; `quiet`: nothing for a sync that changed nothing (a polling loop)."""
    changed = report.registered or report.status_changes
    if as_json:
        if changed or not quiet:
            click.echo(json.dumps(report.public()))
        return
    for v in report.registered:
        click.echo(f"registered {v.entity}/{v.model_type} v{v.version} ({v.status})")
    for line in report.entered:
        click.echo(f"  {line}")
    for v in report.status_changes:
        click.echo(f"{v.entity}/{v.model_type} v{v.version}: {v.status} ({v.reason})")
    if not quiet:
        for s in report.skipped:
            click.echo(f"skipped: {s}", err=True)
        click.echo(f"{len(report.registered)} registered, {len(report.status_changes)} status changes, "
                   f"{len(report.skipped)} skipped")
