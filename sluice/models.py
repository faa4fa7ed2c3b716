"""The model registry: every trained version of every model of every entity.

A version is registered once trained (status `candidate`), serves once its arm has traffic
(`serving`) and leaves its entity's arms when it is `retired` (its arm killed by a
decision, replaced by a newer version, or by hand). Each change is the whole record again
on the compacted models topic, keyed by entity, model type and version, so the topic is
the live view (any service reads it to the end, as specs are read) and the sink keeps the
history in ClickHouse table `model_versions`.

Version numbers increase per model type across entities, so one version of a type names
one model wherever it serves: a job that trains a group of similar entities registers its
version for each of them, and the arm `gbdt-v13` is offered to exactly those entities
(`sluice.core.lifecycle` turns registrations into arms).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from types import TracebackType
from typing import Any, Literal, cast

from sluice.avro import SchemaSet, SingleObjectSerde
from sluice.core.lifecycle import arm_name, with_model_version, without_model_version
from sluice.core.spec import NAME_PATTERN
from sluice.errors import SluiceError
from sluice.experiments import ExperimentRegistry
from sluice.kafka.clients import KEY_SEPARATOR
from sluice.kafka.io import AvroProducer, read_to_end
from sluice.kafka.security import PLAINTEXT, KafkaSecurity
from sluice.kafka.topics import TopicNames

ModelStatus = Literal["candidate", "serving", "retired"]
STATUSES: tuple[ModelStatus, ...] = ("candidate", "serving", "retired")


class ModelRegistryError(SluiceError):
    """A registry request that cannot be done; the message names the model or field."""


@dataclass(frozen=True)
class ModelVersion:
    """One trained version of a model for one entity (the `ModelVersion` record)."""

    entity: str
    model_type: str
    version: int
    trained_at_ms: int
    data_start_ms: int
    data_end_ms: int
    rows: int
    dataset_fingerprint: str
    feature_set: str
    feature_set_version: str
    artifact_uri: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    status: ModelStatus = "candidate"
    source: str = "cli"
    reason: str = "registered"
    updated_at_ms: int = 0
    serving_since_ms: int | None = None

    def __post_init__(self) -> None:
        for name in ("entity", "model_type", "feature_set", "feature_set_version", "artifact_uri",
                     "dataset_fingerprint"):
            if not getattr(self, name):
                raise ModelRegistryError(f"{name} must not be empty")
        if KEY_SEPARATOR in self.entity:
            raise ModelRegistryError(f"entity {self.entity!r} contains the key separator \\x1f")
        if not re.match(NAME_PATTERN, self.model_type) or len(self.model_type) > 100:
            raise ModelRegistryError(f"model_type {self.model_type!r} must be a name of letters, digits, '_', '.' "
                                     "and '-' (it becomes part of an arm's name)")
        if self.version < 1:
            raise ModelRegistryError(f"version must be >= 1, but {self.version} is given")
        if self.rows < 0:
            raise ModelRegistryError(f"rows must be >= 0, but {self.rows} is given")
        if self.data_start_ms > self.data_end_ms:
            raise ModelRegistryError(f"data_start ({self.data_start_ms}) is after data_end ({self.data_end_ms})")
        if self.status not in STATUSES:
            raise ModelRegistryError(f"status must be one of {', '.join(STATUSES)}, but {self.status!r} is given")

    @property
    def arm(self) -> str:
        """The name of the arm this version serves as."""
        return arm_name(self.model_type, self.version)

    @property
    def key(self) -> bytes:
        return model_key(self.entity, self.model_type, self.version)

    def public(self) -> dict[str, Any]:
        """As `sluice models … --json` prints it."""
        return {**asdict(self), "metrics": dict(self.metrics), "arm": self.arm}

    def record(self) -> dict[str, Any]:
        """The `ModelVersion` Avro record of this state, a new change."""
        return {"event_id": str(uuid.uuid4()), "entity": self.entity, "model_type": self.model_type,
                "version": self.version, "status": self.status.upper(), "trained_at": self.trained_at_ms,
                "data_start": self.data_start_ms, "data_end": self.data_end_ms, "rows": self.rows,
                "dataset_fingerprint": self.dataset_fingerprint, "feature_set": self.feature_set,
                "feature_set_version": self.feature_set_version, "artifact_uri": self.artifact_uri,
                "metrics": {k: float(v) for k, v in self.metrics.items()}, "source": self.source,
                "reason": self.reason, "serving_since": self.serving_since_ms, "updated_at": self.updated_at_ms}

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> ModelVersion:
        return cls(r["entity"], r["model_type"], r["version"], r["trained_at"], r["data_start"], r["data_end"],
                   r["rows"], r["dataset_fingerprint"], r["feature_set"], r["feature_set_version"], r["artifact_uri"],
                   dict(r["metrics"]), cast(ModelStatus, r["status"].lower()), r["source"], r["reason"],
                   r["updated_at"], r["serving_since"])


def model_key(entity: str, model_type: str, version: int) -> bytes:
    return KEY_SEPARATOR.join((entity, model_type, str(version))).encode()


class ModelRegistry:
    """The models topic: read to its end at open, every change confirmed by the broker.
    `clock` (epoch ms) stamps changes (`updated_at`, `serving_since`); a simulation passes
    its simulated time."""

    def __init__(self, bootstrap: str, prefix: str = "sluice", serde: SingleObjectSerde | None = None, *,
                 security: KafkaSecurity = PLAINTEXT, clock: Callable[[], int] | None = None) -> None:
        self.topic = TopicNames(prefix).models
        self.clock = clock or wall_clock_ms
        self._serde = serde or SingleObjectSerde(SchemaSet.bundled())
        self._producer = AvroProducer(bootstrap, self._serde, security=security)
        self._versions: dict[bytes, ModelVersion] = {}
        for msg in read_to_end(bootstrap, [self.topic], security=security):
            if msg.key is not None and msg.value is not None:
                self._versions[msg.key] = ModelVersion.from_record(self._serde.decode(msg.value, "ModelVersion").record)

    def __enter__(self) -> ModelRegistry:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self._producer.close()

    def all(self, entity: str | None = None, model_type: str | None = None) -> list[ModelVersion]:
        """Every version (of `entity`, of `model_type` when given), by entity, type and version."""
        found = [v for v in self._versions.values()
                 if (entity is None or v.entity == entity) and (model_type is None or v.model_type == model_type)]
        return sorted(found, key=lambda v: (v.entity, v.model_type, v.version))

    def get(self, entity: str, model_type: str, version: int | None = None) -> ModelVersion:
        """One version, or the newest of (entity, model type) when `version` is None."""
        mine = self.all(entity, model_type)
        if version is None and mine:
            return mine[-1]
        found = self._versions.get(model_key(entity, model_type, version)) if version is not None else None
        if found is None:
            have = ", ".join(f"v{v.version}" for v in mine) or "none"
            what = f"{model_type} v{version}" if version is not None else model_type
            raise ModelRegistryError(f"no {what} for entity {entity!r} on {self.topic} (its {model_type} versions: "
                                     f"{have})")
        return found

    def next_version(self, model_type: str) -> int:
        return 1 + max((v.version for v in self._versions.values() if v.model_type == model_type), default=0)

    def register(self, version: ModelVersion) -> ModelVersion:
        """Publish a newly trained version as a candidate. The same version again with the
        same content changes nothing; with other content it is refused (a version names one
        model)."""
        existing = self._versions.get(version.key)
        if existing is not None:
            if _content(existing) == _content(version):
                return existing
            raise ModelRegistryError(f"{version.model_type} v{version.version} of entity {version.entity!r} is "
                                     "registered already with other content; register a new version")
        done = replace(version, status="candidate", updated_at_ms=self.clock())
        self._publish(done)
        return done

    def set_status(self, entity: str, model_type: str, version: int, status: ModelStatus, reason: str) -> ModelVersion:
        """Move a version to `status`, saying why (a retired version stays retired)."""
        current = self.get(entity, model_type, version)
        if current.status == status:
            return current
        if current.status == "retired":
            raise ModelRegistryError(f"{model_type} v{version} of {entity!r} is retired ({current.reason}); "
                                     "register a new version instead")
        now = self.clock()
        changed = replace(current, status=status, reason=reason, updated_at_ms=now,
                          serving_since_ms=now if status == "serving" else current.serving_since_ms)
        self._publish(changed)
        return changed

    def annotate(self, version: ModelVersion, metrics: Mapping[str, float], reason: str) -> ModelVersion:
        """Add metrics measured after training (a reference reward); the status stays."""
        current = self.get(version.entity, version.model_type, version.version)
        changed = replace(current, metrics={**current.metrics, **metrics}, reason=reason, updated_at_ms=self.clock())
        self._publish(changed)
        return changed

    def _publish(self, version: ModelVersion) -> None:
        self._producer.send(self.topic, version.key, "ModelVersion", version.record())
        self._producer.flush()
        self._versions[version.key] = version


def _content(v: ModelVersion) -> tuple[Any, ...]:
    """What a version is, apart from its state in the life cycle."""
    return (v.entity, v.model_type, v.version, v.trained_at_ms, v.data_start_ms, v.data_end_ms, v.rows,
            v.dataset_fingerprint, v.feature_set, v.feature_set_version, v.artifact_uri, dict(v.metrics))


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class ArmChange:
    """A version's arm entering or leaving an experiment for an entity."""

    experiment_id: str
    arm: str
    entity: str
    text: str


def offer(experiments: ExperimentRegistry, versions: list[ModelVersion]) -> list[ArmChange]:
    """Offer each version's arm to its entity in every experiment that takes its model type
    (`sluice.core.lifecycle`), one new spec version per experiment."""
    changes = []
    for spec in experiments.all():
        new = spec
        for v in versions:
            changed = with_model_version(new, v.entity, v.model_type, v.version, v.artifact_uri,
                                         f"{v.model_type} v{v.version} trained on {v.rows:,} rows of "
                                         f"{v.feature_set}@{v.feature_set_version}")
            if changed is not None and changed.models is not None:
                new = changed
                entry = changed.models.entry
                changes.append(ArmChange(spec.id, v.arm, v.entity, f"{v.arm} enters {spec.id} for {v.entity!r} at "
                                         f"{entry.weight:g} until {entry.until_observations} observations"))
        if new is not spec:
            experiments.apply(new)
    return changes


def register_and_offer(registry: ModelRegistry, experiments: ExperimentRegistry,
                       versions: list[ModelVersion]) -> tuple[list[ModelVersion], list[ArmChange]]:
    """Register newly trained versions and offer their arms (`offer`); a version whose arm
    entered an experiment for its entity is `serving` from then on. Returns the versions as
    registered and the arms that entered. What `sluice models register` and the MLflow
    bridge do with a new version."""
    done = [registry.register(v) for v in versions]
    entered = offer(experiments, done)
    serving = {c.entity: c for c in entered}
    done = [registry.set_status(v.entity, v.model_type, v.version, "serving",
                                f"arm {v.arm} entered {serving[v.entity].experiment_id}")
            if v.entity in serving else v for v in done]
    return done, entered


def withdraw(experiments: ExperimentRegistry, version: ModelVersion) -> list[ArmChange]:
    """Take the version's arm away from its entity in every experiment that offers it."""
    changes = []
    for spec in experiments.all():
        changed = without_model_version(spec, version.entity, version.model_type, version.version)
        if changed is not None:
            experiments.apply(changed)
            changes.append(ArmChange(spec.id, version.arm, version.entity,
                                     f"{version.arm} leaves {spec.id} for {version.entity!r}"))
    return changes
