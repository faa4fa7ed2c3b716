"""The topics of DESIGN.md as code, and their idempotent creation.

`ensure_topics` creates what is missing, leaves what matches alone, and refuses (raising
`TopicConflictError`, changing nothing) when an existing topic's partitions or settings
differ from the definition: silently using a topic with, say, `delete` instead of
`compact` would lose weight tables.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from sluice.kafka.clients import BrokerErrors, admin_config
from sluice.kafka.security import PLAINTEXT, KafkaSecurity

DAY_MS = 24 * 3600 * 1000

Outcome = Literal["created", "unchanged"]


@dataclass(frozen=True)
class TopicNames:
    """Names of Sluice's topics under one prefix (tests use a unique prefix each)."""

    prefix: str = "sluice"

    @property
    def experiments(self) -> str:
        return f"{self.prefix}.experiments.v1"

    @property
    def serves(self) -> str:
        return f"{self.prefix}.serves.v1"

    @property
    def rewards(self) -> str:
        return f"{self.prefix}.rewards.v1"

    @property
    def weights(self) -> str:
        return f"{self.prefix}.weights.v1"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}.alerts.v1"

    @property
    def decisions(self) -> str:
        return f"{self.prefix}.decisions.v1"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq.v1"

    @property
    def api_tokens(self) -> str:
        """The control API's tokens (`sluice.tokens`): compacted, hashed secrets only."""
        return f"{self.prefix}.api-tokens.v1"

    @property
    def audit(self) -> str:
        """Every change made through the control API, with the spec before and after."""
        return f"{self.prefix}.audit.v1"

    @property
    def models(self) -> str:
        """The model registry (`sluice.models`): each version's latest state, compacted."""
        return f"{self.prefix}.models.v1"

    @property
    def training_jobs(self) -> str:
        """Training jobs from the scheduler, and their retries."""
        return f"{self.prefix}.training-jobs.v1"

    @property
    def training_results(self) -> str:
        """How each attempt of a training job ended."""
        return f"{self.prefix}.training-results.v1"

    @property
    def worker_state(self) -> str:
        """The stream workers' changelog (`streams.state`): internal, compacted."""
        return f"{self.prefix}.worker-state.v1"


@dataclass(frozen=True)
class TopicSpec:
    """A topic's partitions and the configs Sluice sets on it (others stay at broker defaults)."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    doc: str = ""


def topic_specs(
    names: TopicNames = TopicNames(),
    *,
    partitions: int = 6,
    event_retention_days: int = 10,
) -> list[TopicSpec]:
    """Sluice's topics. Serves and rewards have the same partition count, so a serve and
    its rewards (same key) meet in one partition; their retention covers the 7-day window
    plus the 24 h attribution window and slack."""
    events = {"cleanup.policy": "delete", "retention.ms": str(event_retention_days * DAY_MS)}
    compacted = {
        "cleanup.policy": "compact",
        # Compact within the hour so a reader of the whole topic reads little history.
        "segment.ms": str(3600 * 1000),
        "min.cleanable.dirty.ratio": "0.1",
    }
    return [
        TopicSpec(names.experiments, 1, compacted, "ExperimentSpec by experiment id: the live definitions"),
        TopicSpec(names.serves, partitions, events, "ServeEvent by experiment id + entity"),
        TopicSpec(names.rewards, partitions, events, "RewardEvent by the key of its serve"),
        TopicSpec(names.weights, partitions, compacted, "WeightTable by experiment id + entity: the latest per key"),
        TopicSpec(names.alerts, 1, {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)}, "Alert by experiment id"),
        TopicSpec(names.decisions, 1, {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)}, "Decision by experiment id"),
        TopicSpec(names.dlq, partitions, {"cleanup.policy": "delete", "retention.ms": str(14 * DAY_MS)}, "rejected input, reason in headers"),
        TopicSpec(names.worker_state, partitions, compacted, "the stream workers' state changes, partitioned as the input"),
        TopicSpec(names.api_tokens, 1, compacted, "ApiToken by token id: every API instance follows the whole set"),
        TopicSpec(names.models, 1, compacted, "ModelVersion by entity, model type and version: the model registry"),
        TopicSpec(names.training_jobs, 1, {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)},
                  "TrainingJob by job id: what the scheduler asks trainers to retrain"),
        TopicSpec(names.training_results, 1, {"cleanup.policy": "delete", "retention.ms": str(365 * DAY_MS)},
                  "TrainingResult by job id: how every attempt ended"),
        # An audit trail outlives the events it explains; ClickHouse keeps it without a TTL.
        TopicSpec(names.audit, 1, {"cleanup.policy": "delete", "retention.ms": str(365 * DAY_MS)},
                  "AuditEvent by experiment id: who changed what through the API"),
    ]


def ensure_topics(bootstrap: str, specs: list[TopicSpec], *, security: KafkaSecurity = PLAINTEXT, replication_factor: int = 1,
                  timeout_s: float = 30.0) -> dict[str, Outcome]:
    """Create the missing topics of `specs`; check the existing ones against them.

    Returns each topic's outcome. Raises `TopicConflictError` listing every difference when
    an existing topic does not match (before creating anything), or `KafkaAdapterError`
    when the broker cannot be reached or refuses (naming the cause librdkafka reported, such
    as a failed authentication).
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

    from sluice.kafka.exceptions import KafkaAdapterError, TopicConflictError

    errors = BrokerErrors()
    admin = AdminClient(admin_config(bootstrap, security, error_cb=errors))
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        cause = errors.explain(admin)
        raise KafkaAdapterError(f"cannot list topics at {bootstrap} (security protocol {security.protocol}): "
                                f"{exc.args[0].str()}{': ' + cause if cause else ''}") from exc

    present = [s for s in specs if s.name in existing]
    conflicts: dict[str, list[str]] = {}
    if present:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in present]
        futures = admin.describe_configs(resources, request_timeout=timeout_s)
        for spec, resource in zip(present, resources):
            diffs = []
            have_partitions = len(existing[spec.name].partitions)
            if have_partitions != spec.partitions:
                diffs.append(f"partitions {have_partitions}, expected {spec.partitions}")
            try:
                configs = futures[resource].result()
            except KafkaException as exc:
                raise KafkaAdapterError(f"cannot describe topic {spec.name}: {exc}") from exc
            for key, want in spec.config.items():
                have = configs[key].value if key in configs else None
                if have != want:
                    diffs.append(f"{key}={have}, expected {want}")
            if diffs:
                conflicts[spec.name] = diffs
    if conflicts:
        raise TopicConflictError(conflicts)

    outcomes: dict[str, Outcome] = {s.name: "unchanged" for s in present}
    missing = [s for s in specs if s.name not in existing]
    if missing:
        new = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=replication_factor, config=dict(s.config)) for s in missing]
        for name, future in admin.create_topics(new, request_timeout=timeout_s).items():
            try:
                future.result()
            except KafkaException as exc:
                err = exc.args[0]
                # Another process created it between our listing and our request: check it next run.
                if getattr(err, "name", lambda: "")() == "TOPIC_ALREADY_EXISTS":
                    outcomes[name] = "unchanged"
                    continue
                raise KafkaAdapterError(f"cannot create topic {name}: {exc}") from exc
            outcomes[name] = "created"
        _wait_until_listed(admin, [s.name for s in missing], timeout_s)
    return outcomes


def _wait_until_listed(admin: Any, names: list[str], timeout_s: float) -> None:
    """Until the broker's metadata lists every topic of `names` with a leader for each of
    its partitions. A topic is created before it is listed: a client that read the metadata
    in between (a registry reading the experiments topic to its end, say) found it missing;
    the demo did, on a broker started a second before."""
    from sluice.kafka.exceptions import KafkaAdapterError

    deadline = time.monotonic() + timeout_s
    while True:
        topics = admin.list_topics(timeout=timeout_s).topics
        waiting = [n for n in names if n not in topics or topics[n].error is not None
                   or not topics[n].partitions or any(p.leader < 0 for p in topics[n].partitions.values())]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise KafkaAdapterError(f"topics {waiting} were created but the broker did not list them with a leader "
                                    f"within {timeout_s:.0f} s")
        time.sleep(0.05)
