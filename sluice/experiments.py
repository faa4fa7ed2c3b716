"""The experiment registry: experiment specs on the compacted experiments topic.

`apply` publishes a validated spec (a new `spec_version` when anything changed, the same
one — and nothing published — when nothing did); `set_status` pauses, resumes or stops an
experiment by publishing its spec again with the new status. Readers (workers, sidecars)
follow the topic and act on the newest version of each experiment.
"""

from __future__ import annotations

import time
import uuid
from types import TracebackType


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
        self._producer.flush()

    def all(self) -> list[ExperimentSpec]:
        return [self._specs[k] for k in sorted(self._specs)]

    def get(self, experiment_id: str) -> ExperimentSpec:
        try:
            return self._specs[experiment_id]
        except KeyError:
            known = ", ".join(sorted(self._specs)) or "none"
            raise ExperimentNotFoundError(f"experiment {experiment_id!r} is not on {self.topic} (known: {known})") from None

    def apply(self, spec: ExperimentSpec, *, explicit_version: bool = False) -> tuple[str, ExperimentSpec]:
        """Publish `spec`. Returns ("created" | "updated" | "unchanged", the published spec).

        A changed spec gets `spec_version` one above the published one unless the caller
        gave a higher version explicitly; an explicit lower or equal version of a changed
        spec is refused, so two people cannot silently overwrite each other's change.
        """
        current = self._specs.get(spec.id)
        if current is None:
            outcome = "created"
        else:
            same = spec.model_copy(update={"spec_version": current.spec_version}) == current
            if same:
                return "unchanged", current
            if explicit_version and spec.spec_version <= current.spec_version:
                raise SluiceError(
                    f"experiment {spec.id!r} is published at spec_version {current.spec_version}; a changed spec "
                    f"needs a higher spec_version than that, but {spec.spec_version} is given (or leave it out)"
                )
            if not explicit_version:
                spec = spec.model_copy(update={"spec_version": current.spec_version + 1})
            outcome = "updated"
        self._publish(spec)
        return outcome, spec

    def set_status(self, experiment_id: str, status: str) -> ExperimentSpec:
        current = self.get(experiment_id)
        if current.status == status:
            return current
        spec = spec_from_mapping({**current.model_dump(mode="json"), "status": status,
                                  "spec_version": current.spec_version + 1})
        self._publish(spec)
        return spec

    def reinstate(self, experiment_id: str, arm: str, entity: str | None = None, *,
                  at_ms: int | None = None) -> ExperimentSpec:
        """Give `arm` its traffic back for `entity` (None: every entity) after a health
        rollback or a decision that retired it: a new spec version records the reinstatement
        in `health.reinstated`, and the worker lifts what was done before it."""
        current = self.get(experiment_id)
        if arm not in current.arm_names:
            raise ExperimentNotFoundError(f"experiment {experiment_id!r} has no arm {arm!r}; "
                                          f"the arms are {list(current.arm_names)}")
        at = int(time.time() * 1000) if at_ms is None else at_ms
        data = current.model_dump(mode="json")
        data["health"]["reinstated"] = [*data["health"]["reinstated"], {"arm": arm, "entity": entity, "at_ms": at}]
        spec = spec_from_mapping({**data, "spec_version": current.spec_version + 1})
        self._publish(spec)
        return spec

    def _publish(self, spec: ExperimentSpec) -> None:
        self._producer.send(self.topic, spec.id.encode(), "ExperimentSpec", spec_record(spec))
        self._producer.flush()
        self._specs[spec.id] = spec
