"""The control plane behind the HTTP API: experiments and tokens as this instance follows
them, and the changes it publishes, each with its audit event.

Every API instance follows the compacted experiments and tokens topics, so any number of
instances agree within a second, and a revoked token is refused by all of them. A change
is made under this instance's lock, after reading the experiments topic to its current end
(`CompactedTopicFollower.sync`), so the version a client says it read is checked against
the newest spec on the topic, not a stale copy; the new spec and its `AuditEvent` are
written in one Kafka transaction, so no change lands without its audit record. Two
instances changing the same experiment within the same few milliseconds can still both
pass the check: the later write wins, and the audit log shows both.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sluice.avro import SingleObjectSerde
from sluice.core.spec import ExperimentSpec, spec_from_record
from sluice.errors import SluiceError
from sluice.experiments import (
    ExperimentNotFoundError,
    applied,
    lookup,
    spec_record,
    with_reinstatement,
    with_retirement,
    with_status,
)
from sluice.kafka import TopicNames
from sluice.kafka.exceptions import KafkaAdapterError
from sluice.kafka.follower import CompactedTopicFollower
from sluice.kafka.security import PLAINTEXT, KafkaSecurity
from sluice.kafka.transactions import TransactionalProducer
from sluice.models import ModelVersion
from sluice.tokens import ApiToken

log = logging.getLogger(__name__)
Change = Callable[[ExperimentSpec | None], ExperimentSpec]


class VersionConflict(SluiceError):
    """The change was based on another version than the published one (HTTP 409)."""

    def __init__(self, message: str, current_version: int) -> None:
        super().__init__(message)
        self.current_version = current_version


@dataclass(frozen=True)
class Actor:
    """Who makes a change, for the audit log: the token and the HTTP request's id."""

    token: ApiToken
    request_id: str


def audit_record(actor: Actor, action: str, before: ExperimentSpec | None, after: ExperimentSpec, at_ms: int, *,
                 arm: str | None = None, entity: str | None = None) -> dict[str, Any]:
    """The `AuditEvent` Avro record of one change."""
    return {"event_id": str(uuid.uuid4()), "request_id": actor.request_id, "token_id": actor.token.token_id,
            "token_name": actor.token.name, "action": action, "experiment_id": after.id, "arm": arm, "entity": entity,
            "before_json": None if before is None else before.model_dump_json(), "after_json": after.model_dump_json(),
            "timestamp": at_ms}


class ControlPlane:
    """Reads follow the topics; writes are checked, published with their audit event, and
    read back before they return (so the next read of this instance shows them)."""

    def __init__(self, bootstrap: str, serde: SingleObjectSerde, names: TopicNames, *, instance_id: str,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        self.names = names
        self._serde = serde
        self._specs = CompactedTopicFollower(bootstrap, names.experiments, self._decode_spec, security=security)
        self._tokens = CompactedTopicFollower(bootstrap, names.api_tokens, self._decode_token, security=security)
        self._models = CompactedTopicFollower(bootstrap, names.models, self._decode_model, security=security)
        # A stable id lets a restarted instance abort what a crash left open at once.
        self._producer = TransactionalProducer(bootstrap, f"sluice-api-{names.prefix}-{instance_id}", security=security)
        self._lock = threading.Lock()

    def start(self, ready_timeout_s: float = 30.0) -> ControlPlane:
        """Follow both topics and wait until each is read to its end; raises `KafkaAdapterError`."""
        for follower in (self._specs, self._tokens, self._models):
            follower.start()
        for follower in (self._specs, self._tokens, self._models):
            if not follower.wait_ready(ready_timeout_s):
                raise KafkaAdapterError(f"{follower.topic} not read within {ready_timeout_s:.0f} s")
        self._producer.init()
        return self

    def close(self) -> None:
        for follower in (self._specs, self._tokens, self._models):
            follower.stop()

    # -- reads ------------------------------------------------------------------------
    def tokens(self) -> dict[str, ApiToken]:
        """Every token by id, as of now (revoked ones too: authentication says so)."""
        return {k.decode(): v for k, v in dict(self._tokens.latest).items()}

    def experiments(self) -> list[ExperimentSpec]:
        specs = self._spec_map()
        return [specs[k] for k in sorted(specs)]

    def experiment(self, experiment_id: str) -> ExperimentSpec:
        return lookup(self._spec_map(), experiment_id, self.names.experiments)

    def models(self, entity: str | None = None, model_type: str | None = None) -> list[ModelVersion]:
        """The model registry's versions (of `entity`, of `model_type`), by entity, type, version."""
        found = [v for v in dict(self._models.latest).values()
                 if (entity is None or v.entity == entity) and (model_type is None or v.model_type == model_type)]
        return sorted(found, key=lambda v: (v.entity, v.model_type, v.version))

    # -- writes -----------------------------------------------------------------------
    def create(self, spec: ExperimentSpec, actor: Actor) -> ExperimentSpec:
        """Publish a new experiment; `VersionConflict` if one with its id exists."""

        def make(current: ExperimentSpec | None) -> ExperimentSpec:
            if current is not None:
                raise VersionConflict(f"experiment {spec.id!r} exists (spec_version {current.spec_version}); "
                                      f"change it with PUT /v1/experiments/{spec.id}", current.spec_version)
            return applied(None, spec)[1]

        return self._change(spec.id, "create", make, actor)

    def update(self, spec: ExperimentSpec, read_version: int, actor: Actor) -> ExperimentSpec:
        """Replace the experiment's spec with `spec`, if `read_version` is still the published one."""

        def make(current: ExperimentSpec | None) -> ExperimentSpec:
            return applied(self._expect(spec.id, current, read_version), spec)[1]

        return self._change(spec.id, "update", make, actor)

    def set_status(self, experiment_id: str, status: str, action: str, actor: Actor,
                   read_version: int | None = None) -> ExperimentSpec:
        """Pause, resume or stop (`action`) the experiment by giving it `status`."""
        return self._change(experiment_id, action,
                            lambda current: with_status(self._expect(experiment_id, current, read_version), status),
                            actor)

    def reinstate(self, experiment_id: str, arm: str, entity: str | None, actor: Actor,
                  read_version: int | None = None) -> ExperimentSpec:
        return self._change(experiment_id, "reinstate", lambda current: with_reinstatement(
            self._expect(experiment_id, current, read_version), arm, entity, _now_ms()), actor, arm=arm, entity=entity)

    def retire(self, experiment_id: str, arm: str, entity: str | None, actor: Actor,
               read_version: int | None = None) -> ExperimentSpec:
        return self._change(experiment_id, "retire", lambda current: with_retirement(
            self._expect(experiment_id, current, read_version), arm, entity, _now_ms()), actor, arm=arm, entity=entity)

    def _expect(self, experiment_id: str, current: ExperimentSpec | None, read_version: int | None) -> ExperimentSpec:
        """`current`, checked to exist and, when the client said which version it read, to be that one."""
        if current is None:
            raise ExperimentNotFoundError(f"experiment {experiment_id!r} is not on {self.names.experiments}")
        if read_version is not None and read_version != current.spec_version:
            raise VersionConflict(f"experiment {experiment_id!r} is at spec_version {current.spec_version}, "
                                  f"not {read_version} as the request's If-Match says: read it again and "
                                  "redo the change on the current version", current.spec_version)
        return current

    def _change(self, experiment_id: str, action: str, make: Change, actor: Actor, *, arm: str | None = None,
                entity: str | None = None) -> ExperimentSpec:
        """Apply `make` to the newest published spec; publish the result (unless it is that
        same spec) and its audit event in one transaction, and read it back."""
        with self._lock:
            self._specs.sync()
            current = self._spec_map().get(experiment_id)
            after = make(current)
            if after is current:
                return after
            now = _now_ms()
            key = experiment_id.encode()
            spec_value = self._serde.encode("ExperimentSpec", spec_record(after, now))
            audit_value = self._serde.encode("AuditEvent", audit_record(actor, action, current, after, now,
                                                                        arm=arm, entity=entity))
            self._producer.begin()
            self._producer.send(self.names.experiments, key, spec_value)
            self._producer.send(self.names.audit, key, audit_value)
            self._producer.commit(None)
            if not self._specs.wait_until(lambda latest: key in latest and latest[key].spec_version >= after.spec_version):
                # Published all the same: say so, and do not fail the request.
                log.warning("%s: published version %d, not read back yet", experiment_id, after.spec_version)
            return after

    def _spec_map(self) -> dict[str, ExperimentSpec]:
        return {k.decode(): v for k, v in dict(self._specs.latest).items()}

    def _decode_spec(self, value: bytes) -> ExperimentSpec:
        return spec_from_record(self._serde.decode(value, "ExperimentSpec").record)

    def _decode_token(self, value: bytes) -> ApiToken:
        return ApiToken.from_record(self._serde.decode(value, "ApiToken").record)

    def _decode_model(self, value: bytes) -> ModelVersion:
        return ModelVersion.from_record(self._serde.decode(value, "ModelVersion").record)


def _now_ms() -> int:
    return int(time.time() * 1000)

