"""The model lifecycle inside `make demo`: the scheduler, a trainer and the lifecycle
follower run beside the simulation, on its simulated clock.

Each site of the demo's models experiment (examples/demo/models.yaml) starts with version 1
of its click model, trained on data that ended three days before the simulation starts.
Its true click rate falls as that data ages (the scenario's `models` section), so:

- the scheduler (`services.scheduler.TrainingScheduler`, policies in
  examples/demo/training.yaml) finds the sites' models due and, their datasets being
  similar, sends one grouped training job for all of them;
- the trainer (`services.trainer.Trainer` with `services.demo_trainer:train`, a logistic
  regression on the experiment's own logs, in a spawned process pool) trains the group and
  registers the new version for each site, which enters the site's arms at its entry weight;
- the fresh version earns more, the bandit moves traffic to it, and the decision that stops
  (or a newer ship that replaces) the old version reaches the lifecycle follower
  (`services.lifecycle.LifecycleFollower`), which retires it in the registry and takes its
  arm away.

These are the classes `sluice scheduler`, `sluice trainer` and `sluice models follow` run,
in threads of the demo process because they must share the simulated clock: the demo
compresses days into seconds, and "due every 4 days" or "trained at" mean simulated days.
The worker, sidecar and sink are the demo's usual child processes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sluice.avro import SingleObjectSerde
from sluice.core.scheduler import scheduler_config
from sluice.core.spec import ExperimentSpec
from sluice.experiments import ExperimentRegistry
from sluice.kafka.follower import CompactedTopicFollower
from sluice.kafka.security import KafkaSecurity
from sluice.kafka.topics import TopicNames
from sluice.models import ModelRegistry, ModelVersion, model_key, register_and_offer
from services.lifecycle import LifecycleFollower
from services.scheduler import TrainingScheduler
from services.simulator import DAY_MS, HOUR_MS
from services.trainer import Trainer

log = logging.getLogger(__name__)

SEED_AGE_DAYS = 3.0  # version 1's training data ended this long before the simulation starts
SEED_WINDOW_DAYS = 7.0
SCHEDULER_EVERY_MS = 6 * HOUR_MS  # simulated time between two scheduler rounds
MODEL_TYPE = "ctr-lr"


class LifecycleDemo:
    """`seed` the first versions, `start` the services, `lines` for what happened since the
    last call, `stop`, then `summary`."""

    def __init__(self, bootstrap: str, security: KafkaSecurity, prefix: str, serde: SingleObjectSerde,
                 spec: ExperimentSpec, policies: Path, models_dir: Path) -> None:
        self.bootstrap, self.security, self.prefix, self.serde, self.spec = bootstrap, security, prefix, serde, spec
        self.names = TopicNames(prefix)
        self.config = scheduler_config(_load_yaml(policies))
        self.models_dir = models_dir
        self.clock: Callable[[], int] = lambda: 0  # the simulated time, set before `start`
        self.start_ms = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._jobs: list[dict[str, Any]] = []
        self._shown = {"jobs": 0, "results": 0, "handled": 0}
        self._versions = CompactedTopicFollower(bootstrap, self.names.models,
                                                lambda v: ModelVersion.from_record(serde.decode(v, "ModelVersion").record),
                                                security=security)
        self.trainer: Trainer | None = None
        self.scheduler: TrainingScheduler | None = None
        self.follower: LifecycleFollower | None = None

    def data_end(self, entity: str, model_type: str, version: int) -> int | None:
        """When a version's training data ended (the simulator's decay needs it)."""
        v = self._versions.latest.get(model_key(entity, model_type, version))
        return None if v is None else v.data_end_ms

    def seed(self, start_ms: int, serves_per_day: float) -> list[str]:
        """Register and offer version 1 for every site, trained on the week that ended
        `SEED_AGE_DAYS` before `start_ms`; returns what entered."""
        self.start_ms = start_ms
        end = start_ms - round(SEED_AGE_DAYS * DAY_MS)
        entities = list(self.spec.entities or ())
        with ModelRegistry(self.bootstrap, self.prefix, self.serde, security=self.security, clock=lambda: end) as registry, \
                ExperimentRegistry(self.bootstrap, self.prefix, self.serde, security=self.security) as experiments:
            _, entered = register_and_offer(registry, experiments, [ModelVersion(
                entity=e, model_type=MODEL_TYPE, version=1, trained_at_ms=end, data_start_ms=end - round(SEED_WINDOW_DAYS * DAY_MS),
                data_end_ms=end, rows=round(serves_per_day * SEED_WINDOW_DAYS * (1 + 0.15 * i)),
                dataset_fingerprint=f"seed:{e}", feature_set="serve-context", feature_set_version="1",
                artifact_uri=f"file://{self.models_dir}/seed/{MODEL_TYPE}-{e}-v1.npz", metrics={},
                source="demo", reason="trained before the demo began") for i, e in enumerate(entities)])
        self._versions.start()
        return [c.text for c in entered]

    def start(self, clock: Callable[[], int]) -> None:
        """Run the scheduler, the trainer and the lifecycle follower until `stop`."""
        self.clock = clock
        # The trainer's pool processes read where the logs are from the environment.
        os.environ.update({"KAFKA_BOOTSTRAP": self.bootstrap, "SLUICE_TRAINING_PREFIX": self.prefix,
                           "SLUICE_MODELS_DIR": str(self.models_dir)})
        self.trainer = Trainer(self.bootstrap, self.prefix, self.serde, "services.demo_trainer:train", workers=1,
                               max_attempts=3, backoff_s=2.0, security=self.security, clock=clock)
        self.follower = LifecycleFollower(self.bootstrap, self.prefix, self.serde, security=self.security, clock=clock)
        self.scheduler = scheduler = TrainingScheduler(self.bootstrap, self.prefix, self.serde, self.config,
                                                       security=self.security)
        for name, target in (("scheduler", lambda: self._schedule(scheduler)),
                             ("trainer", lambda: self.trainer.run(until=self._stop.is_set)),  # type: ignore[union-attr]
                             ("lifecycle", lambda: self.follower.run(until=self._stop.is_set))):  # type: ignore[union-attr]
            thread = threading.Thread(target=_logged(name, target), name=f"demo-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _schedule(self, scheduler: TrainingScheduler) -> None:
        due = self.start_ms
        while not self._stop.is_set():
            now = self.clock()
            if now < due:
                time.sleep(0.05)
                continue
            self._jobs += scheduler.round(now_ms=now)
            due = now + SCHEDULER_EVERY_MS

    def lines(self) -> list[str]:
        """What the scheduler, the trainer and the follower did since the last call."""
        out = []
        day = f"day {(self.clock() - self.start_ms) / DAY_MS:4.1f}"
        for job in self._jobs[self._shown["jobs"]:]:
            members = job["members"]
            why = sorted({r for m in members for r in m["reasons"]})
            grouped = f"one job for {len(members)} similar datasets" if len(members) > 1 else "a job of its own"
            out.append(f"{day}  scheduler: {job['model_type']} of {', '.join(m['entity'] for m in members)} due "
                       f"({', '.join(why)}): {grouped}, {job['job_id'][:8]}")
        results = list(self.trainer.results) if self.trainer else []
        for r in results[self._shown["results"]:]:
            if r["status"] == "SUCCEEDED":
                out.append(f"{day}  trainer: job {r['job_id'][:8]} built the datasets once in {r['transform_ms']} ms, "
                           f"trained in {r['train_ms']} ms: {', '.join(r['versions'])}")
                arms = sorted({f"{v.split('/')[1]}-v{v.split('/')[2]}" for v in r["versions"]})
                sites = ", ".join(v.split("/")[0] for v in r["versions"])
                entry = self.spec.models.entry if self.spec.models is not None else None
                at = f"at {entry.weight:g} until {entry.until_observations} observations" if entry else "as an arm"
                out.append(f"{day}  lifecycle: {', '.join(arms)} enters {self.spec.id} for {sites} {at}")
            else:
                out.append(f"{day}  trainer: job {r['job_id'][:8]} attempt {r['attempt']} {r['status'].lower()}: "
                           f"{r['error']}")
        handled = list(self.follower.handled) if self.follower else []
        out += [f"{day}  lifecycle: {line}" for line in handled[self._shown["handled"]:]]
        self._shown = {"jobs": len(self._jobs), "results": len(results), "handled": len(handled)}
        return out

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        for service in (self.trainer, self.scheduler):
            if service is not None:
                service.close()
        self._versions.stop()

    def summary(self) -> dict[str, Any]:
        """Every version with its status and why, the jobs sent, and the trainer's results."""
        with ModelRegistry(self.bootstrap, self.prefix, self.serde, security=self.security) as registry:
            versions = registry.all(model_type=MODEL_TYPE)

        def day(ms: int | None) -> float | None:
            return None if ms is None else round((ms - self.start_ms) / DAY_MS, 2)

        return {
            "versions": [{"entity": v.entity, "arm": v.arm, "version": v.version, "status": v.status, "reason": v.reason,
                          "trained_day": day(v.trained_at_ms), "data_end_day": day(v.data_end_ms), "rows": v.rows,
                          "serving_since_day": day(v.serving_since_ms), "source": v.source,
                          "auc": v.metrics.get("auc")} for v in versions],
            "jobs": [{"job_id": j["job_id"], "day": day(j["created_at"]), "members": [m["entity"] for m in j["members"]],
                      "reasons": sorted({r for m in j["members"] for r in m["reasons"]})} for j in self._jobs],
            "results": [{k: r[k] for k in ("job_id", "attempt", "status", "transform_ms", "train_ms", "versions", "error")}
                        for r in (self.trainer.results if self.trainer else [])],
            "lifecycle": list(self.follower.handled) if self.follower else [],
        }


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _logged(name: str, target: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            target()
        except Exception:  # noqa: BLE001 - the demo goes on; its summary shows what did not happen
            log.exception("the demo's %s stopped", name)
    return run
