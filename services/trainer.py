"""Trainers: run the scheduler's training jobs, register what they train, retry what fails.

A trainer consumes the training-jobs topic (a consumer group: start more to share the
work) and runs each job through an entry point in a local process pool, the job record as
its only input:

- `module:function`: a Python callable `function(job: dict) -> dict`;
- `command:<shell command>`: the job as JSON on standard input, the result as JSON on
  standard output (exit status 0), for trainers in any language.

The result says `transform_ms` (building the datasets, once for the whole group),
`train_ms`, and `models`: per member entity, `artifact_uri`, `rows`, `data_start_ms`,
`data_end_ms`, `dataset_fingerprint` and optional `metrics`. The trainer registers them as
one new version of the job's model type (`sluice.models`), which enters the entity's
experiments as an arm, and records the attempt on the training-results topic.

A failed attempt is recorded with its error and sent again as the next attempt, after an
exponential backoff (`not_before`), until `max_attempts`, when it is recorded as given up.
A job's offset is committed only after its result (and retry) are on Kafka, so a job is
never lost: a trainer that dies mid-job leaves it to the next one (which may train it twice).
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
from collections import deque
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from sluice.avro import SingleObjectSerde
from sluice.errors import SluiceError
from sluice.experiments import ExperimentRegistry
from sluice.kafka.clients import consumer_config
from sluice.kafka.io import AvroProducer
from sluice.kafka.security import PLAINTEXT, KafkaSecurity
from sluice.kafka.topics import TopicNames
from sluice.models import ModelRegistry, ModelVersion, register_and_offer, wall_clock_ms

log = logging.getLogger(__name__)


class TrainerError(SluiceError):
    """An entry point that cannot be used, or a result that does not say what was trained."""


def run_entry(entry: str, job: dict[str, Any]) -> dict[str, Any]:
    """Run one job through `entry` (in a pool process); the entry's result."""
    if entry.startswith("command:"):
        done = subprocess.run(entry.removeprefix("command:"), shell=True, input=json.dumps(job), capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise TrainerError(f"training command exited with {done.returncode}: {done.stderr.strip()[-500:]}")
        return json.loads(done.stdout)
    return resolve(entry)(job)


def resolve(entry: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    module, sep, name = entry.partition(":")
    if not sep or not module or not name:
        raise TrainerError(f"entry point {entry!r} is neither module:function nor command:<shell command>")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise TrainerError(f"entry point {entry!r} cannot be loaded: {exc}") from None
    if not callable(fn):
        raise TrainerError(f"entry point {entry!r} is not callable")
    return fn


class Trainer:
    def __init__(self, bootstrap: str, prefix: str, serde: SingleObjectSerde, entry: str, *, workers: int = 2,
                 max_attempts: int = 4, backoff_s: float = 60.0, group_id: str | None = None,
                 security: KafkaSecurity = PLAINTEXT, clock: Callable[[], int] = wall_clock_ms) -> None:
        """`clock` (epoch ms) dates what is registered (`trained_at`, `serving_since`); a
        simulation passes its simulated time. Backoff waits are wall-clock time."""
        if not entry.startswith("command:"):
            resolve(entry)  # fail at start, not on the first job
        self.bootstrap, self.prefix, self.serde, self.entry, self.security = bootstrap, prefix, serde, entry, security
        self.workers, self.max_attempts, self.backoff_s, self.clock = workers, max_attempts, backoff_s, clock
        self.names = TopicNames(prefix)
        self.group_id = group_id or f"{prefix}-trainer"
        self._producer = AvroProducer(bootstrap, serde, security=security)
        self.results: deque[dict[str, Any]] = deque(maxlen=1000)  # the latest attempts' results, in order

    def run(self, until: Callable[[], bool] = lambda: False) -> None:
        from confluent_kafka import Consumer

        consumer = Consumer(consumer_config(self.bootstrap, self.group_id, self.security,
                                            **{"max.poll.interval.ms": 3_600_000}))
        consumer.subscribe([self.names.training_jobs])
        pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            while not until():
                messages = [m for m in consumer.consume(self.workers, timeout=0.5) if m.error() is None]
                if not messages:
                    continue
                jobs = [self.serde.decode(m.value(), "TrainingJob").record for m in messages]
                self._wait_until(max(j["not_before"] for j in jobs), until)
                started = {j["job_id"]: time.monotonic() for j in jobs}
                futures: list[Future[dict[str, Any]]] = [pool.submit(run_entry, self.entry, j) for j in jobs]
                for job, future in zip(jobs, futures):
                    self._finish(job, future, time.monotonic() - started[job["job_id"]])
                self._producer.flush()
                consumer.commit(messages[-1], asynchronous=False)
                if any(isinstance(f.exception(), BrokenProcessPool) for f in futures):
                    pool.shutdown(cancel_futures=True)  # a job killed its process: the next ones get a new pool
                    pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        finally:
            pool.shutdown(cancel_futures=True)
            consumer.close()

    def close(self) -> None:
        """Let the Kafka producer go once done (flushed first), before its broker may stop."""
        self._producer.close()

    @staticmethod
    def _wait_until(not_before_ms: int, until: Callable[[], bool]) -> None:
        while not until() and time.time() * 1000 < not_before_ms:
            time.sleep(min(1.0, max(0.01, not_before_ms / 1000 - time.time())))

    def _finish(self, job: dict[str, Any], future: Future[dict[str, Any]], elapsed_s: float) -> None:
        now = int(time.time() * 1000)
        result = {"event_id": str(uuid.uuid4()), "job_id": job["job_id"], "attempt": job["attempt"], "error": None,
                  "transform_ms": 0, "train_ms": int(elapsed_s * 1000), "versions": [], "retry_at": None,
                  "finished_at": now}
        try:
            outcome = future.result()
            versions = self._register(job, outcome)
            result |= {"status": "SUCCEEDED", "versions": versions, "transform_ms": int(outcome.get("transform_ms", 0)),
                       "train_ms": int(outcome.get("train_ms", result["train_ms"]))}
        except Exception as exc:  # noqa: BLE001 - any failure of a job is recorded and retried, never fatal
            error = f"{type(exc).__name__}: {exc}"[:2000]
            if job["attempt"] < self.max_attempts:
                retry_at = now + int(self.backoff_s * 1000 * 2 ** (job["attempt"] - 1))
                self._producer.send(self.names.training_jobs, job["job_id"].encode(), "TrainingJob",
                                    {**job, "attempt": job["attempt"] + 1, "not_before": retry_at,
                                     "previous_error": error})
                result |= {"status": "FAILED", "error": error, "retry_at": retry_at}
            else:
                result |= {"status": "GAVE_UP", "error": error}
            log.warning("job %s attempt %d %s: %s", job["job_id"], job["attempt"], result["status"].lower(), error)
        self._producer.send(self.names.training_results, job["job_id"].encode(), "TrainingResult", result)
        self.results.append(result)

    def _register(self, job: dict[str, Any], outcome: dict[str, Any]) -> list[str]:
        """One new version of the job's model type for every member the result trained."""
        trained = {m.get("entity"): m for m in outcome.get("models", [])}
        missing = [m["entity"] for m in job["members"] if m["entity"] not in trained]
        if missing:
            raise TrainerError(f"the result has no model for {missing}; it must have one per member")
        with ModelRegistry(self.bootstrap, self.prefix, self.serde, security=self.security, clock=self.clock) as registry, \
                ExperimentRegistry(self.bootstrap, self.prefix, self.serde, security=self.security) as experiments:
            from sluice.core.lifecycle import next_arm_version

            number = max(registry.next_version(job["model_type"]),
                         next_arm_version(experiments.all(), job["model_type"]))
            now = self.clock()
            versions = []
            for m in job["members"]:
                t = trained[m["entity"]]
                try:
                    versions.append(ModelVersion(
                        m["entity"], job["model_type"], number, now, int(t["data_start_ms"]), int(t["data_end_ms"]),
                        int(t["rows"]), str(t["dataset_fingerprint"]), job["feature_set"], job["feature_set_version"],
                        str(t["artifact_uri"]), {k: float(v) for k, v in (t.get("metrics") or {}).items()},
                        source="trainer", reason=f"trained by job {job['job_id']}"))
                except KeyError as exc:
                    raise TrainerError(f"the result's model for {m['entity']!r} lacks {exc}") from None
            done, _ = register_and_offer(registry, experiments, versions)
        return [f"{v.entity}/{v.model_type}/{v.version}" for v in done]
