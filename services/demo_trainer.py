"""A trainer entry point that trains something real: per entity, a logistic regression of
the reward on the serve's logged context, fitted from the experiment's own logs on Kafka.

`train(job)` is a `sluice trainer --entry services.demo_trainer:train` entry point. Where
the logs are is deployment configuration, read from the environment: `KAFKA_BOOTSTRAP` (and
the `KAFKA_SECURITY_PROTOCOL` / `KAFKA_SASL_*` settings) and `SLUICE_TRAINING_PREFIX` (the
topic prefix, default `sluice`). The data of an entity are its
serves in the experiments whose spec takes the job's model type, over the job's window
(event time, up to the newest serve), each labelled 1 when a reward with a positive value
(other than a request outcome) names it.

The **transformation** (what a group job does once for all its members): read the
partitions that hold the members' keys, decode and join serves with rewards, and one-hot
encode every context field into one vocabulary for the group. **Feature sets**
(docs/feature-sets.md): every model gets the base context (the logged context without any
feature set's values); a model whose job names a feature set its experiment declares (the
job's `feature_set` and `feature_set_version`, from the registered version) also gets that
set's columns, from the logged context or joined from its parquet files
(`sluice.analytics.features`), and no model gets another set's. A job per entity reads its
entity's partition and builds its vocabulary once per entity; `bench/bench_training.py`
measures both on the same data. The **training** is per member: an L2-regularised logistic
regression (scipy's L-BFGS), its AUC on a held-out fifth, the coefficients and the feature
names (`column=value`, then `intercept`) saved as .npz under `SLUICE_MODELS_DIR` (default:
the temporary directory).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize

from sluice.analytics.features import FeatureJoiner
from sluice.avro import SchemaSet, SingleObjectSerde
from sluice.core.features import base_context
from sluice.core.lifecycle import takes
from sluice.core.health import REQUEST_OUTCOME
from sluice.core.spec import ExperimentSpec, FeatureSet
from sluice.experiments import ExperimentRegistry
from sluice.kafka.clients import consumer_config, entity_key
from sluice.kafka.partitions import partition_for_key
from sluice.kafka.security import PLAINTEXT, KafkaSecurity
from sluice.kafka.topics import TopicNames

DAY_MS = 86_400_000


@dataclass
class Dataset:
    """One entity's rows: one-hot context features (with the group's vocabulary) and labels.
    `x` (rows, features + 1), the intercept last; `features` names its columns."""

    x: np.ndarray
    y: np.ndarray
    start_ms: int
    end_ms: int
    features: list[str]


Serve = tuple[int, str, str, dict[str, str]]  # time (epoch ms), serve id, unit id, logged context


class FeatureSetMismatch(RuntimeError):
    """The job's feature set is declared differently by two experiments the model serves in."""


def transform(bootstrap: str, prefix: str, entities: list[str], model_type: str, window_days: float,
              serde: SingleObjectSerde | None = None, security: KafkaSecurity = PLAINTEXT, *,
              feature_set: tuple[str, str] | None = None) -> dict[str, Dataset]:
    """Each entity's dataset, built in one pass over the partitions that hold them.
    `feature_set`: the model's (name, version); its columns are added when an experiment
    that takes the model declares that set."""
    serde = serde or SingleObjectSerde(SchemaSet.bundled())
    names = TopicNames(prefix)
    with ExperimentRegistry(bootstrap, prefix, serde, security=security) as experiments:
        specs = [spec for spec in experiments.all() if any(takes(spec, e, model_type) for e in entities)]
        keys = {entity_key(spec.id, e): e for spec in specs for e in entities if takes(spec, e, model_type)}
    declared = declared_feature_set(specs, feature_set)
    joiner = FeatureJoiner(declared) if declared is not None else None
    serves, clicked = _read(bootstrap, names, keys, serde, security)
    features: dict[str, list[list[tuple[str, str]]]] = {}  # entity -> per serve in the window, its (column, value)s
    kept: dict[str, list[Serve]] = {}
    vocabulary: dict[tuple[str, str], int] = {}
    for entity, rows in serves.items():
        newest = max(r[0] for r in rows)
        kept[entity] = [r for r in rows if r[0] >= newest - window_days * DAY_MS]
        features[entity] = []
        for t, _, unit_id, context in kept[entity]:
            items = list(base_context(context).items())
            if joiner is not None:
                values = joiner.values(entity, t, unit_id, context)
                items += [(c, str(v)) for c, v in zip(joiner.column_names, values) if v is not None]
            features[entity].append(items)
            for item in items:
                vocabulary.setdefault(item, len(vocabulary))
    if joiner is not None:
        joiner.check_found()
    feature_names = [f"{k}={v}" for k, v in vocabulary] + ["intercept"]
    out = {}
    for entity, rows in kept.items():
        x = np.zeros((len(rows), len(vocabulary) + 1))
        x[:, -1] = 1.0  # intercept
        for i, items in enumerate(features[entity]):
            x[i, [vocabulary[item] for item in items]] = 1.0
        y = np.array([1.0 if sid in clicked else 0.0 for _, sid, _, _ in rows])
        out[entity] = Dataset(x, y, min(r[0] for r in rows), max(r[0] for r in rows), feature_names)
    return out


def declared_feature_set(specs: list[ExperimentSpec], feature_set: tuple[str, str] | None) -> FeatureSet | None:
    """The model's feature set as the experiments it serves in declare it; None when none
    declares it (the model gets the base context only, like a production model)."""
    if feature_set is None:
        return None
    found = {fs for spec in specs for fs in spec.feature_sets if (fs.name, fs.version) == feature_set}
    if len(found) > 1:
        raise FeatureSetMismatch(f"feature set {feature_set[0]}@{feature_set[1]} is declared differently by the "
                                 f"experiments the model serves in: {sorted(fs.model_dump_json() for fs in found)}")
    return next(iter(found), None)


def _read(bootstrap: str, names: TopicNames, keys: dict[bytes, str], serde: SingleObjectSerde,
          security: KafkaSecurity) -> tuple[dict[str, list[Serve]], set[str]]:
    """Serves (time, serve id, unit id, context) per entity, and the serve ids with a positive
    reward, from the partitions of `keys`, read to their end as of now."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(consumer_config(bootstrap, "sluice-demo-trainer-unused", security))
    try:
        metadata = consumer.list_topics(timeout=10)
        wanted = []
        for topic in (names.serves, names.rewards):
            n = len(metadata.topics[topic].partitions)
            for p in sorted({partition_for_key(k, n) for k in keys}):
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                if high > low:
                    wanted.append((TopicPartition(topic, p, low), high))
        consumer.assign([tp for tp, _ in wanted])
        ends = {(tp.topic, tp.partition): high for tp, high in wanted}
        serves: dict[str, list[Serve]] = {e: [] for e in keys.values()}
        clicked: set[str] = set()
        while ends:
            for msg in consumer.consume(num_messages=10_000, timeout=0.1):
                if msg.error() is not None:
                    continue
                tp = (msg.topic(), msg.partition())
                if tp not in ends:
                    continue
                if msg.offset() + 1 >= ends[tp]:
                    del ends[tp]
                entity = keys.get(msg.key())
                if entity is None:
                    continue
                try:
                    record = serde.decode(msg.value()).record
                except Exception:  # noqa: BLE001 - what the worker dead-letters is no training data either
                    continue
                if msg.topic() == names.serves:
                    serves[entity].append((record["timestamp"], record["serve_id"], record["unit_id"],
                                           dict(record["context"])))
                elif record["value"] > 0 and record["name"] != REQUEST_OUTCOME:
                    clicked.add(record["serve_id"])
        return {e: rows for e, rows in serves.items() if rows}, clicked
    finally:
        consumer.close()


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> np.ndarray:
    """Coefficients of an L2-regularised logistic regression (the intercept, last, unpenalised)."""
    penalty = np.full(x.shape[1], l2)
    penalty[-1] = 0.0

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ w
        p = 1.0 / (1.0 + np.exp(-z))
        value = np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(penalty * w * w)
        return float(value), x.T @ (p - y) + penalty * w

    return minimize(loss, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B").x


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (the rank statistic; NaN without both labels)."""
    pos, neg = scores[y == 1], scores[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1.0
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def train(job: dict[str, Any]) -> dict[str, Any]:
    """The entry point: transform once for the group, fit one model per member."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    if not bootstrap:
        raise RuntimeError("the demo trainer reads the logs from Kafka: set KAFKA_BOOTSTRAP")
    prefix = os.environ.get("SLUICE_TRAINING_PREFIX", "sluice")
    out_dir = Path(os.environ.get("SLUICE_MODELS_DIR", tempfile.gettempdir())) / "sluice-models"
    out_dir.mkdir(parents=True, exist_ok=True)
    entities = [m["entity"] for m in job["members"]]
    started = time.perf_counter()
    declared = (job["feature_set"], job["feature_set_version"]) if job.get("feature_set") else None
    data = transform(bootstrap, prefix, entities, job["model_type"], job["window_days"],
                     security=KafkaSecurity.from_environment(), feature_set=declared)
    transform_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    models = []
    for entity in entities:
        d = data.get(entity)
        if d is None or len(d.y) < 10:
            raise RuntimeError(f"entity {entity!r} has {0 if d is None else len(d.y)} serves in the window; "
                               "too few to train on")
        holdout = np.arange(len(d.y)) % 5 == 0
        w = fit_logistic(d.x[~holdout], d.y[~holdout])
        fingerprint = hashlib.sha256(d.x.tobytes() + d.y.tobytes()).hexdigest()
        path = out_dir / f"{job['model_type']}-{entity}-{job['job_id']}.npz"
        np.savez(path, coefficients=w, features=np.array(d.features))
        models.append({"entity": entity, "artifact_uri": path.as_uri(), "rows": int(len(d.y)),
                       "data_start_ms": d.start_ms, "data_end_ms": d.end_ms, "dataset_fingerprint": f"sha256:{fingerprint}",
                       "metrics": {"auc": auc(d.x[holdout] @ w, d.y[holdout]), "positive_rate": float(d.y.mean())}})
    return {"transform_ms": round(transform_ms), "train_ms": round((time.perf_counter() - started) * 1000),
            "models": models}
