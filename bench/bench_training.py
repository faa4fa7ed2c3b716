"""Grouped training jobs against one job per entity: the total transformation time of the
demo trainer (`services.demo_trainer.transform`: read the members' partitions of serves and
rewards, join them, one-hot encode the context) when the scheduler groups 24 similar
entities into one job, next to 24 jobs of one entity each, on the same topics in the same
run. Both must give every entity the same rows and labels; fitting the 24 models is timed
as its own figure.

The workload: 24 advertisers on 6 partitions, each with serves carrying a device, an hour
and a segment, clicked with a probability that depends on them (a logistic model), rewards
a few seconds after their serves.
"""

from __future__ import annotations

import time
import uuid

import numpy as np

from bench._figures import Figure
from bench._stack import kafka
from services.demo_trainer import fit_logistic, transform
from sluice.avro import SchemaSet, SingleObjectSerde
from sluice.core.serve_token import format_serve_id
from sluice.core.spec import spec_from_mapping
from sluice.experiments import ExperimentRegistry
from sluice.kafka import TopicNames, ensure_topics, topic_specs
from sluice.kafka.clients import entity_key
from sluice.kafka.io import AvroProducer

SUITE = "training"
ENTITIES = [f"adv-{i:02d}" for i in range(24)]
DEVICES, SEGMENTS = ("mobile", "desktop", "tablet"), ("a", "b", "c", "d", "e")


def _produce(bootstrap: str, names: TopicNames, serde: SingleObjectSerde, per_entity: int) -> None:
    rng = np.random.default_rng(11)
    producer = AvroProducer(bootstrap, serde)
    start = int(time.time() * 1000) - 7 * 86_400_000
    for e in ENTITIES:
        bias = rng.normal(-3.0, 0.3)
        effect = {("device", d): rng.normal(0, 0.4) for d in DEVICES} | {("segment", s): rng.normal(0, 0.4) for s in SEGMENTS}
        for i in range(per_entity):
            ts = start + i * (7 * 86_400_000 // per_entity)
            context = {"device": DEVICES[rng.integers(3)], "segment": SEGMENTS[rng.integers(5)],
                       "hour": str((ts // 3_600_000) % 24)}
            sid = format_serve_id(uuid.uuid4().hex[:24], ts, True, "gbdt-v1")
            producer.send(names.serves, entity_key("ranking", e), "ServeEvent", {
                "event_id": sid, "serve_id": sid, "experiment_id": "ranking", "entity": e, "unit_id": f"u{i}",
                "arm": "gbdt-v1", "in_experiment": True, "propensity": 0.5, "weights_version": 1, "bucket": 0,
                "timestamp": ts, "context": context})
            logit = bias + effect[("device", context["device"])] + effect[("segment", context["segment"])]
            if rng.random() < 1 / (1 + np.exp(-logit)):
                producer.send(names.rewards, entity_key("ranking", e), "RewardEvent", {
                    "event_id": str(uuid.uuid4()), "serve_id": sid, "experiment_id": "ranking", "entity": e,
                    "name": "click", "value": 1.0, "timestamp": ts + 5_000, "latency_ms": None, "error": None})
    producer.flush()


def run(quick: bool) -> list[Figure]:
    per_entity = 2_000 if quick else 20_000
    serde = SingleObjectSerde(SchemaSet.bundled())
    prefix = f"bench-training-{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    with kafka() as bootstrap:
        ensure_topics(bootstrap, topic_specs(names, partitions=6))
        spec = spec_from_mapping({
            "id": "ranking", "status": "running", "salt": "s", "unit": "user_id", "entity": "advertiser",
            "parameters": [{"name": "model", "type": "string"}],
            "arms": [{"name": "baseline", "values": {"model": "m0"}}, {"name": "gbdt-v1", "values": {"model": "m1"}}],
            "default_arm": "baseline", "policy": {"name": "thompson", "params": {}},
            "reward": {"type": "binary", "name": "click"}, "models": {"parameter": "model"}})
        with ExperimentRegistry(bootstrap, prefix, serde) as experiments:
            experiments.apply(spec)
        _produce(bootstrap, names, serde, per_entity)

        started = time.perf_counter()
        grouped = transform(bootstrap, prefix, ENTITIES, "gbdt", 28.0, serde)
        grouped_s = time.perf_counter() - started
        started = time.perf_counter()
        alone = {}
        for e in ENTITIES:
            alone |= transform(bootstrap, prefix, [e], "gbdt", 28.0, serde)
        alone_s = time.perf_counter() - started
    for e in ENTITIES:
        if len(grouped[e].y) != len(alone[e].y) or not np.array_equal(grouped[e].y, alone[e].y):
            raise AssertionError(f"{e}: the grouped job's dataset differs from its own job's")
    started = time.perf_counter()
    for e in ENTITIES:
        fit_logistic(grouped[e].x, grouped[e].y)
    fit_s = time.perf_counter() - started
    rows = sum(len(d.y) for d in grouped.values())
    return [
        Figure(SUITE, f"transformation for {len(ENTITIES)} similar entities, one grouped job", grouped_s, "s", "lower",
               f"{len(ENTITIES)} jobs of one entity", alone_s,
               note=f"{rows:,} serves on 6 partitions, {sum(d.y.sum() for d in grouped.values()):,.0f} clicked; "
                    f"the grouped job reads each partition once, a job per entity reads its entity's partition "
                    f"each time; same rows and labels per entity"),
        Figure(SUITE, f"fitting {len(ENTITIES)} logistic regressions (L-BFGS, one-hot context)", fit_s, "s", "lower",
               note=f"{grouped[ENTITIES[0]].x.shape[1]} features with the group's vocabulary"),
    ]
