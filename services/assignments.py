"""Assignments for the simulator: the core assignment code in process, fed by the live
weights topic, logging every serve as a ServeEvent (what the SDK does for a service)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sluice.core.allocation import Allocation
from sluice.core.assignment import Assigner
from sluice.core.spec import ExperimentSpec
from sluice.kafka.clients import entity_key
from sluice.kafka.follower import CompactedTopicFollower
from sluice.kafka.io import AvroProducer
from sluice.kafka.topics import TopicNames
from services.simulator import Served


class InProcessAssignments:
    """Assign with the latest weight table of each (experiment, entity) as followed from
    the weights topic; with no table yet, or a paused experiment, the default arm (outside
    the experiment, version 0)."""

    def __init__(self, bootstrap: str, names: TopicNames, specs: Mapping[str, ExperimentSpec], serde: Any,
                 producer: AvroProducer) -> None:
        self.specs, self.names, self.producer = specs, names, producer
        self._serde = serde
        self._assigners: dict[bytes, tuple[int, Assigner]] = {}
        self.tables: CompactedTopicFollower[dict[str, Any]] = CompactedTopicFollower(
            bootstrap, names.weights, lambda v: serde.decode(v, "WeightTable").record)
        self.tables.start()
        self.tables.wait_ready(30)

    def _assigner(self, spec: ExperimentSpec, key: bytes) -> tuple[int, Assigner]:
        table = self.tables.latest.get(key)
        if table is None or spec.status != "running":
            counts = [0] * len(spec.arms)
            counts[spec.arm_index(spec.default_arm)] = spec.num_buckets
            return 0, spec.assigner(Allocation.contiguous(counts))
        cached = self._assigners.get(key)
        if cached is None or cached[0] != table["version"]:
            arms, allocation = Allocation.from_arm_weights(table["arms"], table["num_buckets"])
            layer = None if spec.layer is None else spec.layer.to_slice()
            cached = self._assigners[key] = (table["version"], Assigner(
                spec.salt, allocation, arms, spec.default_arm, spec.traffic_fraction, layer))
        return cached

    def assign(self, experiment: str, entity: str, unit_ids: list[str], timestamps_ms: list[int]) -> list[Served]:
        spec = self.specs[experiment]
        key = entity_key(experiment, entity)
        version, assigner = self._assigner(spec, key)
        batch = assigner.assign_batch(unit_ids)
        arms = batch.arm_names().tolist()
        inside = (batch.in_experiment & (version > 0)).tolist()
        out = []
        for unit, ts, arm, p, ins, bucket in zip(unit_ids, timestamps_ms, arms, batch.propensity.tolist(), inside,
                                                 batch.bucket.tolist()):
            serve_id = str(uuid.uuid4())
            self.producer.send(self.names.serves, key, "ServeEvent", {
                "event_id": serve_id, "serve_id": serve_id, "experiment_id": experiment, "entity": entity,
                "unit_id": unit, "arm": arm, "in_experiment": ins, "propensity": p if ins else 1.0,
                "weights_version": version, "bucket": bucket, "timestamp": ts, "context": {},
            })
            out.append(Served(serve_id, arm, ins))
        return out

    def close(self) -> None:
        self.tables.stop()
