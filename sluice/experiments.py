"""The experiment registry: experiment specs on the compacted experiments topic.

`apply` publishes a validated spec (a new `spec_version` when anything changed, the same
one — and nothing published — when nothing did); `set_status` pauses, resumes or stops an
experiment by publishing its spec again with the new status; `reinstate` and `retire` give
an arm its traffic back or take it away. Readers (workers, sidecars) follow the topic and
act on the newest version of each experiment.

What each change makes of the current spec is a pure function (`applied`, `with_status`,
`with_reinstatement`, `with_retirement`), shared by the registry (the `sluice experiments`
commands) and the control API, which publishes the result with its audit event.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Literal

from sluice.avro import SchemaSet, SingleObjectSerde
from sluice.core.spec import ExperimentSpec, spec_from_mapping, spec_from_record
from sluice.errors import SluiceError
from sluice.kafka.io import AvroProducer, read_to_end
from sluice.kafka.security import PLAINTEXT, KafkaSecurity
from sluice.kafka.topics import TopicNames


class ExperimentNotFoundError(SluiceError):
    """No spec of that experiment is on the topic."""


def spec_record(spec: ExperimentSpec, updated_at_ms: int | None = None) -> dict[str, object]:
    """The `ExperimentSpec` Avro record of `spec`."""
    updated = int(time.time() * 1000) if updated_at_ms is None else updated_at_ms
    return {"event_id": str(uuid.uuid4()), "updated_at": updated, **spec.record_fields()}


Outcome = Literal["created", "updated", "unchanged"]


def applied(current: ExperimentSpec | None, spec: ExperimentSpec, *,
            explicit_version: bool = False) -> tuple[Outcome, ExperimentSpec]:
    """What publishing `spec` over `current` (None: not published yet) gives: ("created" |
    "updated" | "unchanged", the spec to publish, or `current` when unchanged).

    A changed spec gets `spec_version` one above the published one unless the caller gave a
    higher version explicitly; an explicit lower or equal version of a changed spec is
    refused, so two people cannot silently overwrite each other's change.
    """
    if current is None:
        return "created", spec
    if spec.model_copy(update={"spec_version": current.spec_version}) == current:
        return "unchanged", current
    if explicit_version and spec.spec_version <= current.spec_version:
        raise SluiceError(
            f"experiment {spec.id!r} is published at spec_version {current.spec_version}; a changed spec "
            f"needs a higher spec_version than that, but {spec.spec_version} is given (or leave it out)"
        )
    if not explicit_version:
        spec = spec.model_copy(update={"spec_version": current.spec_version + 1})
    return "updated", spec


def with_status(current: ExperimentSpec, status: str) -> ExperimentSpec:
    """`current` with `status` as its next version (`current` itself if it has it already)."""
    if current.status == status:
        return current
    return spec_from_mapping({**current.model_dump(mode="json"), "status": status,
                              "spec_version": current.spec_version + 1})


def _with_arm_change(current: ExperimentSpec, section: str, arm: str, entity: str | None,
                     at_ms: int) -> ExperimentSpec:
    if arm not in current.arm_names:
        raise ExperimentNotFoundError(f"experiment {current.id!r} has no arm {arm!r}; "
                                      f"the arms are {list(current.arm_names)}")
    data = current.model_dump(mode="json")
    data["health"][section] = [*data["health"][section], {"arm": arm, "entity": entity, "at_ms": at_ms}]
    return spec_from_mapping({**data, "spec_version": current.spec_version + 1})


def with_reinstatement(current: ExperimentSpec, arm: str, entity: str | None, at_ms: int) -> ExperimentSpec:
    """`current`'s next version giving `arm` its traffic back for `entity` (None: every
    entity) after a health rollback, a decision or an operator retired it: it is recorded in
    `health.reinstated`, and the worker lifts what was done before `at_ms`."""
    return _with_arm_change(current, "reinstated", arm, entity, at_ms)


def with_retirement(current: ExperimentSpec, arm: str, entity: str | None, at_ms: int) -> ExperimentSpec:
    """`current`'s next version taking `arm` out of traffic for `entity` (None: every
    entity): recorded in `health.retired`, the worker holds it at 0 until it is reinstated.
    The default arm cannot be retired (raises `SpecError`)."""
    return _with_arm_change(current, "retired", arm, entity, at_ms)


class ExperimentRegistry:
    """Reads the experiments topic once at open, publishes through a confirming producer."""

    def __init__(self, bootstrap: str, prefix: str = "sluice", serde: SingleObjectSerde | None = None, *,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        self.topic = TopicNames(prefix).experiments
        self._serde = serde or SingleObjectSerde(SchemaSet.bundled())
        self._producer = AvroProducer(bootstrap, self._serde, security=security)
        self._specs: dict[str, ExperimentSpec] = {}
        for msg in read_to_end(bootstrap, [self.topic], security=security):
            if msg.key is None:
                continue
            if msg.value is None:
                self._specs.pop(msg.key.decode(), None)
                continue
            record = self._serde.decode(msg.value, "ExperimentSpec").record
            self._specs[msg.key.decode()] = spec_from_record(record)

    def __enter__(self) -> ExperimentRegistry:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self._producer.close()

    def all(self) -> list[ExperimentSpec]:
        return [self._specs[k] for k in sorted(self._specs)]

    def get(self, experiment_id: str) -> ExperimentSpec:
        return lookup(self._specs, experiment_id, self.topic)

    def apply(self, spec: ExperimentSpec, *, explicit_version: bool = False) -> tuple[Outcome, ExperimentSpec]:
        """Publish `spec` as `applied` says. Returns the outcome and the published spec."""
        outcome, published = applied(self._specs.get(spec.id), spec, explicit_version=explicit_version)
        if outcome != "unchanged":
            self._publish(published)
        return outcome, published

    def set_status(self, experiment_id: str, status: str) -> ExperimentSpec:
        current = self.get(experiment_id)
        spec = with_status(current, status)
        if spec is not current:
            self._publish(spec)
        return spec

    def reinstate(self, experiment_id: str, arm: str, entity: str | None = None, *,
                  at_ms: int | None = None) -> ExperimentSpec:
        """Give `arm` its traffic back for `entity` (None: every entity); see `with_reinstatement`."""
        at = int(time.time() * 1000) if at_ms is None else at_ms
        spec = with_reinstatement(self.get(experiment_id), arm, entity, at)
        self._publish(spec)
        return spec

    def retire(self, experiment_id: str, arm: str, entity: str | None = None, *,
               at_ms: int | None = None) -> ExperimentSpec:
        """Take `arm` out of traffic for `entity` (None: every entity); see `with_retirement`."""
        at = int(time.time() * 1000) if at_ms is None else at_ms
        spec = with_retirement(self.get(experiment_id), arm, entity, at)
        self._publish(spec)
        return spec

    def _publish(self, spec: ExperimentSpec) -> None:
        self._producer.send(self.topic, spec.id.encode(), "ExperimentSpec", spec_record(spec))
        self._producer.flush()
        self._specs[spec.id] = spec


def lookup(specs: Mapping[str, ExperimentSpec], experiment_id: str, topic: str) -> ExperimentSpec:
    """`specs[experiment_id]`, or `ExperimentNotFoundError` naming the known experiments."""
    try:
        return specs[experiment_id]
    except KeyError:
        known = ", ".join(sorted(specs)) or "none"
        raise ExperimentNotFoundError(f"experiment {experiment_id!r} is not on {topic} (known: {known})") from None
