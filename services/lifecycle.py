"""The lifecycle follower: keeps the model registry in step with what decisions do.

It follows the decisions topic (a consumer group, so it resumes where it stopped) and, per
Decision, retires in the registry the model versions the decision retired for its entity,
or that a newer winner of their type replaced (`sluice.core.lifecycle.retirements`), and
takes their arms away from that entity in every experiment (`sluice.models.withdraw`). Each
step is idempotent (a retired version stays retired, an arm gone stays gone), so a
decision handled twice after a crash changes nothing more; offsets are committed after a
decision is handled.

The registries are read afresh for each decision: decisions are rare (one per entity when
its verdict changes), and the compacted topics hold one record per version or experiment.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from sluice.avro import SingleObjectSerde
from sluice.core.lifecycle import parse_arm, retirements
from sluice.experiments import ExperimentNotFoundError, ExperimentRegistry
from sluice.kafka.clients import consumer_config
from sluice.kafka.security import PLAINTEXT, KafkaSecurity
from sluice.kafka.topics import TopicNames
from sluice.models import ModelRegistry, ModelRegistryError, wall_clock_ms, withdraw

log = logging.getLogger(__name__)


class LifecycleFollower:
    def __init__(self, bootstrap: str, prefix: str, serde: SingleObjectSerde, *, group_id: str | None = None,
                 security: KafkaSecurity = PLAINTEXT, clock: Callable[[], int] = wall_clock_ms) -> None:
        """`clock` (epoch ms) is the time a decision is handled at (how long a winner has
        served); a simulation passes its simulated time."""
        self.bootstrap, self.prefix, self.serde, self.security, self.clock = bootstrap, prefix, serde, security, clock
        self.topic = TopicNames(prefix).decisions
        self.group_id = group_id or f"{prefix}-lifecycle"
        self.handled: deque[str] = deque(maxlen=1000)  # what the latest handled decisions did, newest last

    def run(self, until: Callable[[], bool] = lambda: False) -> None:
        from confluent_kafka import Consumer

        consumer = Consumer(consumer_config(self.bootstrap, self.group_id, self.security))
        consumer.subscribe([self.topic])
        try:
            while not until():
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error() is not None:
                    log.warning("decisions topic: %s", msg.error())
                    continue
                try:
                    record = self.serde.decode(msg.value(), "Decision").record
                except Exception as exc:  # noqa: BLE001 - a record we cannot read is skipped, said, not fatal
                    log.error("skipped an unreadable decision at %s[%d]@%d: %s", msg.topic(), msg.partition(),
                              msg.offset(), exc)
                else:
                    self.handled.extend(self.handle(record, self.clock()))
                consumer.commit(msg, asynchronous=False)
        finally:
            consumer.close()

    def handle(self, decision: dict[str, Any], now_ms: int) -> list[str]:
        """Retire what `decision` retired or replaced; returns what was done, one line each."""
        with ExperimentRegistry(self.bootstrap, self.prefix, self.serde, security=self.security) as experiments:
            try:
                spec = experiments.get(decision["experiment_id"])
            except ExperimentNotFoundError:
                return []
            if spec.models is None or decision.get("entity") is None:
                return []
            entity = decision["entity"]
            with ModelRegistry(self.bootstrap, self.prefix, self.serde, security=self.security, clock=self.clock) as registry:
                entered = {}
                for arm in spec.arms_of(entity):
                    parsed = parse_arm(arm)
                    if parsed is None:
                        continue
                    try:
                        v = registry.get(entity, *parsed)
                    except ModelRegistryError:
                        continue  # an arm made by hand, not a registered version
                    if v.status == "serving" and v.serving_since_ms is not None:
                        entered[arm] = v.serving_since_ms
                done = []
                for r in retirements(decision, spec, entered, now_ms):
                    try:
                        version = registry.set_status(r.entity, r.model_type, r.version, "retired", r.reason)
                    except ModelRegistryError as exc:
                        log.info("not retired: %s", exc)
                        continue
                    done.append(f"retired {r.entity}/{r.model_type} v{r.version}: {r.reason}")
                    done += [c.text for c in withdraw(experiments, version)]
        for line in done:
            log.info("%s", line)
        return done
