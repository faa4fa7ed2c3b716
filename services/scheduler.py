"""The training scheduler service: every round, what to retrain, as jobs on a topic.

A round reads the model registry (each entity's newest live version of each model type),
the latest weight table of every (experiment, entity) (traffic and each arm's reward over
the window), and the jobs still open; plans with `sluice.core.scheduler.plan`; and sends a
`TrainingJob` per group of similar datasets that has no open job yet. Trainers
(`services.trainer`) run them.

What the round estimates, from the tables:

- an entity's traffic: serves per day over its tables' windows, summed over experiments;
- a version's reward now: its arm's mean over the window (the experiment where it has most
  observations); the entity's best reward: the best arm's mean there;
- its reward just after training: recorded once, in the registry's metrics as
  `reward_at_entry`, the first time its arm has `REFERENCE_OBSERVATIONS` in a window;
- rows arrived since its training data ended: the traffic times the days since.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from sluice.avro import SingleObjectSerde
from sluice.core.lifecycle import arm_name
from sluice.core.scheduler import DAY_MS, Fleet, Plan, SchedulerConfig, plan
from sluice.kafka.io import AvroProducer, read_to_end
from sluice.kafka.security import PLAINTEXT, KafkaSecurity
from sluice.kafka.topics import TopicNames
from sluice.models import ModelRegistry, ModelVersion

log = logging.getLogger(__name__)
REFERENCE_OBSERVATIONS = 500  # observations of a new version's arm that fix its reference reward


def live_versions(versions: list[ModelVersion]) -> list[ModelVersion]:
    """Each (entity, model type)'s newest version that is not retired."""
    newest: dict[tuple[str, str], ModelVersion] = {}
    for v in versions:
        key = (v.entity, v.model_type)
        if v.status != "retired" and (key not in newest or v.version > newest[key].version):
            newest[key] = v
    return sorted(newest.values(), key=lambda v: (v.entity, v.model_type))


def arm_statistics(tables: list[dict[str, Any]]) -> tuple[dict[str, float], dict[tuple[str, str], tuple[float, float]],
                                                          dict[str, float]]:
    """From the latest weight tables: serves per day per entity; (entity, arm) → (count,
    mean) from the experiment where the arm has most observations; the best arm mean per
    entity (arms with 30 observations or more)."""
    per_day: dict[str, float] = {}
    arms: dict[tuple[str, str], tuple[float, float]] = {}
    best: dict[str, float] = {}
    for t in tables:
        days = max((t["window_end"] - t["window_start"]) / DAY_MS, 1 / 24)
        entity = t["entity"]
        per_day[entity] = per_day.get(entity, 0.0) + sum(s["serves"] for s in t["statistics"]) / days
        for s in t["statistics"]:
            if s["count"] <= 0:
                continue
            mean = min(s["sum"], s["count"]) / s["count"] if t.get("reward_type") == "binary" else s["sum"] / s["count"]
            if s["count"] > arms.get((entity, s["arm"]), (0.0, 0.0))[0]:
                arms[(entity, s["arm"])] = (float(s["count"]), mean)
            if s["count"] >= 30:
                best[entity] = max(best.get(entity, -np.inf), mean)
    return per_day, arms, best


def fleet_from(versions: list[ModelVersion], tables: list[dict[str, Any]], now_ms: int) -> tuple[Fleet, list[ModelVersion]]:
    """The scheduler's fleet (one row per live version) and the versions in its row order."""
    live = live_versions(versions)
    per_day, arms, best = arm_statistics(tables)
    nan = float("nan")
    traffic = [per_day.get(v.entity, 0.0) for v in live]
    return Fleet.of(
        [v.entity for v in live], [v.model_type for v in live],
        trained_at_ms=[v.trained_at_ms for v in live],
        rows_since=[int(t * max(0.0, (now_ms - v.data_end_ms) / DAY_MS)) for v, t in zip(live, traffic)],
        rows=[max(v.rows, 1) for v in live],
        feature_set=[f"{v.feature_set}@{v.feature_set_version}" for v in live],
        window_days=[max((v.data_end_ms - v.data_start_ms) / DAY_MS, 1 / 24) for v in live],
        serves_per_day=traffic,
        reward_now=[arms.get((v.entity, v.arm), (0.0, nan))[1] for v in live],
        reward_trained=[v.metrics.get("reward_at_entry", nan) for v in live],
        best_reward=[best.get(v.entity, nan) for v in live],
    ), live


def open_jobs(jobs: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Jobs whose last attempt has not ended for good (no result yet, or failed and retried),
    by job id, as their newest attempt."""
    newest: dict[str, dict[str, Any]] = {}
    for j in jobs:
        if j["attempt"] >= newest.get(j["job_id"], {"attempt": 0})["attempt"]:
            newest[j["job_id"]] = j
    ended = {r["job_id"] for r in results if r["status"] in ("SUCCEEDED", "GAVE_UP")}
    return {job_id: j for job_id, j in newest.items() if job_id not in ended}


def job_records(p: Plan, fleet: Fleet, live: list[ModelVersion], now_ms: int,
                busy: set[tuple[str, str]]) -> list[dict[str, Any]]:
    """A TrainingJob record per planned job, without the members an open job already has."""
    out = []
    for job in p.jobs:
        members = [i for i in job.members if (fleet.entity[i], fleet.model_type[i]) not in busy]
        if not members:
            continue
        name, _, version = job.feature_set.rpartition("@")
        out.append({
            "job_id": str(uuid.uuid4()), "attempt": 1, "model_type": job.model_type, "feature_set": name,
            "feature_set_version": version, "window_days": job.window_days,
            "members": [{"entity": fleet.entity[i], "serving_version": live[i].version, "rows": int(fleet.rows[i]),
                         "reasons": p.reason_names(i), "expected_gain": float(p.expected_gain[i])} for i in members],
            "expected_gain": float(sum(p.expected_gain[i] for i in members)),
            "created_at": now_ms, "not_before": now_ms, "previous_error": None,
        })
    return out


class TrainingScheduler:
    """One `round` plans and sends jobs; `run` repeats it every `every_s` seconds."""

    def __init__(self, bootstrap: str, prefix: str, serde: SingleObjectSerde, config: SchedulerConfig, *,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        self.bootstrap, self.prefix, self.serde, self.config, self.security = bootstrap, prefix, serde, config, security
        self.names = TopicNames(prefix)
        self._producer = AvroProducer(bootstrap, serde, security=security)

    def _read(self, topic: str, schema: str) -> list[dict[str, Any]]:
        return [self.serde.decode(m.value, schema).record
                for m in read_to_end(self.bootstrap, [topic], security=self.security) if m.value is not None]

    def round(self, now_ms: int | None = None) -> list[dict[str, Any]]:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        # Open jobs before the registry: a job that ends between the two reads then has its
        # new versions in the registry read, rather than its old ones found due once more.
        busy = {(m["entity"], j["model_type"]) for j in open_jobs(
            self._read(self.names.training_jobs, "TrainingJob"),
            self._read(self.names.training_results, "TrainingResult")).values() for m in j["members"]}
        tables = self._latest_tables()
        with ModelRegistry(self.bootstrap, self.prefix, self.serde, security=self.security) as registry:
            self._record_reference_rewards(registry, tables)
            fleet, live = fleet_from(registry.all(), tables, now_ms)
        if not len(fleet):
            return []
        p = plan(fleet, self.config.policies(), now_ms, gap_share=self.config.gap_share,
                 assumed_decay=self.config.assumed_decay, grouping=self.config.grouping_rules())
        records = job_records(p, fleet, live, now_ms, busy)
        for r in records:
            self._producer.send(self.names.training_jobs, r["job_id"].encode(), "TrainingJob", r)
        self._producer.flush()
        for r in records:
            log.info("job %s: %s on %s@%s for %s (worth %.3g rewards a day)", r["job_id"], r["model_type"],
                     r["feature_set"], r["feature_set_version"], ", ".join(m["entity"] for m in r["members"]),
                     r["expected_gain"])
        return records

    def close(self) -> None:
        """Let the Kafka producer go once done (flushed first), before its broker may stop."""
        self._producer.close()

    def run(self, every_s: float, until: Callable[[], bool] = lambda: False) -> None:
        while not until():
            started = time.monotonic()
            self.round()
            while not until() and time.monotonic() - started < every_s:
                time.sleep(min(1.0, every_s))

    def _latest_tables(self) -> list[dict[str, Any]]:
        from sluice.experiments import ExperimentRegistry

        latest: dict[bytes, dict[str, Any]] = {}
        for m in read_to_end(self.bootstrap, [self.names.weights], security=self.security):
            if m.key is not None and m.value is not None:
                latest[m.key] = self.serde.decode(m.value, "WeightTable").record
        with ExperimentRegistry(self.bootstrap, self.prefix, self.serde, security=self.security) as experiments:
            kinds = {s.id: s.reward.type for s in experiments.all()}
        return [{**t, "reward_type": kinds.get(t["experiment_id"], "binary")} for t in latest.values()]

    @staticmethod
    def _record_reference_rewards(registry: ModelRegistry, tables: list[dict[str, Any]]) -> None:
        _, arms, _ = arm_statistics(tables)
        for v in live_versions(registry.all()):
            seen = arms.get((v.entity, arm_name(v.model_type, v.version)))
            if v.status == "serving" and "reward_at_entry" not in v.metrics and seen and seen[0] >= REFERENCE_OBSERVATIONS:
                registry.annotate(v, {"reward_at_entry": seen[1]},
                                  f"reference reward {seen[1]:.4g} over its first {int(seen[0])} observations")

