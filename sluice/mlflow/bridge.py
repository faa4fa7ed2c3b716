"""The MLflow bridge: what an MLflow Model Registry announces, registered in Sluice's.

Each sync reads the registered models (or the ones named) and their versions from MLflow,
and for every version Sluice does not have yet reads its run and registers it as
`sluice models register` does (`register_and_offer`: a candidate, whose arm enters the
experiments that take its model type). Then each version's status follows the model's
aliases (`mapping.status_change`). A version is registered once: the registry is keyed by
entity, model type and version, and the sync looks there first, so a second sync, a
restart, or a webhook and a poll announcing the same version register nothing again. A
version that cannot be registered is skipped with the reason, logged once per process.

The registries are read afresh for each sync (the compacted topics hold one record per
version or experiment), so what the lifecycle follower or the CLI changed meanwhile is seen.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from sluice.errors import SluiceError
from sluice.experiments import ExperimentRegistry
from sluice.kafka.security import PLAINTEXT, KafkaSecurity
from sluice.mlflow.client import MlflowClient
from sluice.mlflow.exceptions import MlflowNotFound
from sluice.mlflow.mapping import (
    ENTITY_TAG,
    SERVING_ALIASES,
    Skipped,
    aliases_by_version,
    sluice_versions,
    status_change,
    tags_of,
)
from sluice.models import ArmChange, ModelRegistry, ModelVersion, register_and_offer

log = logging.getLogger(__name__)
Registries = Callable[[], AbstractContextManager[tuple[ModelRegistry, ExperimentRegistry]]]


def kafka_registries(bootstrap: str, prefix: str, security: KafkaSecurity = PLAINTEXT) -> Registries:
    """Opens the model and experiment registries of topic prefix `prefix`, read to their end."""

    @contextmanager
    def opened() -> Iterator[tuple[ModelRegistry, ExperimentRegistry]]:
        with ModelRegistry(bootstrap, prefix, security=security) as models, \
                ExperimentRegistry(bootstrap, prefix, security=security) as experiments:
            yield models, experiments

    return opened


@dataclass
class SyncReport:
    """What one sync did: versions registered, statuses changed, arms that entered, and
    MLflow versions skipped with the reason."""

    registered: list[ModelVersion] = field(default_factory=list)
    status_changes: list[ModelVersion] = field(default_factory=list)
    entered: list[ArmChange] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        """As `sluice models mlflow-sync --json` prints it."""
        return {"registered": [v.public() for v in self.registered],
                "status_changes": [v.public() for v in self.status_changes],
                "entered": [c.text for c in self.entered], "skipped": [str(s) for s in self.skipped]}


class MlflowBridge:
    """Registers in Sluice what the MLflow server behind `client` has. `models`: only these
    registered models (None: all); `serving_aliases`: the aliases that mean `serving`.
    Syncs of one bridge run one at a time (the webhook receiver may call from several
    threads)."""

    def __init__(self, client: MlflowClient, registries: Registries, *, models: Collection[str] | None = None,
                 serving_aliases: Collection[str] = SERVING_ALIASES) -> None:
        self.client = client
        self._registries = registries
        self._models = None if models is None else set(models)
        self._serving_aliases = tuple(serving_aliases)
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def sync(self, names: Collection[str] | None = None) -> SyncReport:
        """One pass over the registered models `names` (None: every one this bridge follows)."""
        with self._lock, self._registries() as (models, experiments):
            report = SyncReport()
            if names is None:
                found = [m for m in self.client.registered_models() if self._follows(m.get("name", ""))]
            else:
                found = []
                for name in names:
                    if not self._follows(name):
                        continue
                    try:
                        found.append(self.client.registered_model(name))
                    except MlflowNotFound:
                        log.info("MLflow has no registered model %r (deleted, or a test delivery); nothing to sync",
                                 name)
            for registered_model in found:
                self._sync_model(registered_model, models, experiments, report)
            return report

    def _follows(self, name: str) -> bool:
        return self._models is None or name in self._models

    def _sync_model(self, registered_model: dict[str, Any], models: ModelRegistry, experiments: ExperimentRegistry,
                    report: SyncReport) -> None:
        name = registered_model["name"]
        aliases = aliases_by_version(registered_model)
        # Oldest first: versions are registered, and their statuses change, in MLflow's order.
        for version in sorted(self.client.model_versions(name), key=_number):
            number = str(version.get("version", ""))
            known = [v for v in models.all(model_type=name) if str(v.version) == number]
            if not known or not _entities_known(version, known):
                self._register(registered_model, version, known, models, experiments, report)
            for current in models.all(model_type=name):
                if str(current.version) != number:
                    continue
                change = status_change(current, aliases.get(number, []), self._serving_aliases)
                if change is not None:
                    report.status_changes.append(models.set_status(current.entity, current.model_type,
                                                                   current.version, *change))

    def _register(self, registered_model: dict[str, Any], version: dict[str, Any], known: list[ModelVersion],
                  models: ModelRegistry, experiments: ExperimentRegistry, report: SyncReport) -> None:
        run_id = version.get("run_id")
        run = None
        if run_id:
            try:
                run = self.client.run(run_id)
            except MlflowNotFound:
                log.warning("MLflow model %r version %s: its run %s is gone; registered without its metrics",
                            version.get("name"), version.get("version"), run_id)
        mapped = sluice_versions(registered_model, version, run)
        if isinstance(mapped, list):
            other = next((k for k in known if k.artifact_uri != mapped[0].artifact_uri), None)
            if other is not None:
                mapped = Skipped(version["name"], str(version["version"]),
                                 f"{other.model_type} v{other.version} is registered in Sluice already for "
                                 f"{other.entity!r} with artifact {other.artifact_uri} (source {other.source}); a "
                                 "type's version names one model, so MLflow's cannot be another")
        if isinstance(mapped, Skipped):
            report.skipped.append(mapped)
            if str(mapped) not in self._warned:
                self._warned.add(str(mapped))
                log.warning("%s", mapped)
            return
        new = [v for v in mapped if v.entity not in {k.entity for k in known}]
        try:
            done, entered = register_and_offer(models, experiments, new)
        except SluiceError as exc:
            report.skipped.append(Skipped(version["name"], str(version["version"]), f"not registered: {exc}"))
            log.warning("MLflow model %r version %s not registered: %s", version["name"], version["version"], exc)
            return
        report.registered.extend(done)
        report.entered.extend(entered)
        for v in done:
            log.info("registered %s/%s v%s from MLflow (%s)", v.entity, v.model_type, v.version, v.status)


def _number(version: dict[str, Any]) -> int:
    text = str(version.get("version", ""))
    return int(text) if text.isdigit() else 0


def _entities_known(version: dict[str, Any], known: list[ModelVersion]) -> bool:
    """Whether every entity the version's own tag names is registered already (without the
    tag on the version itself, a version known for any entity counts as known: its entities
    come from the run, which is read only for a version not seen before)."""
    tag = tags_of(version).get(ENTITY_TAG)
    if not tag:
        return True
    return {e.strip() for e in tag.split(",") if e.strip()} <= {k.entity for k in known}
