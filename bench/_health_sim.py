"""The stream worker's logic in process, hour by simulated hour, for the health benchmark.

Each simulated hour, every (experiment, entity) gets serves drawn from the weights it last
published (so the SRM test sees the versions it served under), a reported outcome per serve
(latency, error) and clicks at its arms' true rates; the batch goes through the worker's
`Processor` into a local store, and then every pair has a publication round
(`streams.publisher.publication_round`: health, actions, a new table), as the worker does
on its interval. No Kafka: the same code the worker runs between consume and commit.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sluice.avro import SchemaSet, SingleObjectSerde
from sluice.avro.serve_event import ServeEventWriter
from sluice.core.health import REQUEST_OUTCOME
from sluice.core.serve_token import format_serve_id
from sluice.core.spec import ExperimentSpec
from sluice.kafka.clients import entity_key
from streams.processor import InputEvent, Processor
from streams.publisher import current_weights, publication_round
from streams.store import LocalStore

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Truth:
    """How an arm really behaves in some hour."""

    click: float = 0.05
    error: float = 0.005
    latency_median_ms: float = 40.0
    latency_sigma: float = 0.25  # of log latency: 0.25 gives p95 ≈ 60 ms


@dataclass
class Pair:
    spec: ExperimentSpec
    entity: str
    truths: Callable[[int], dict[str, Truth]]  # hour index → arm → truth
    rollbacks: list[tuple[int, str, str]] = field(default_factory=list)  # (hour, arm, guardrail)
    alerts: list[tuple[int, str, str]] = field(default_factory=list)
    reports: dict[str, np.ndarray] = field(default_factory=dict)  # arm → per hour [outcomes, errors]


class Simulation:
    def __init__(self, pairs: list[Pair], path: Path, *, serves_per_hour: int, hours: int, seed: int) -> None:
        self.pairs, self.hours, self.per_hour = pairs, hours, serves_per_hour
        self.rng = np.random.default_rng(seed)
        self.serde = SingleObjectSerde(SchemaSet.bundled())
        self.writer = ServeEventWriter(self.serde.schemas.latest("ServeEvent"))
        specs = {p.spec.id: p.spec for p in pairs}
        self.store = LocalStore(path)
        self.start_ms = (int(time.time() * 1000) // HOUR_MS - hours - 1) * HOUR_MS
        self.processor = Processor(self.serde, specs.get, self.store, now_ms=lambda: self.start_ms + (hours + 1) * HOUR_MS,
                                   partition_of=lambda key: 0)
        self._offset = 0
        for p in pairs:
            p.reports = {a: np.zeros((hours, 2)) for a in p.spec.arm_names}

    def run(self, on_hour: Callable[[int], None] | None = None) -> None:
        for hour in range(self.hours):
            events = []
            for pair in self.pairs:
                events += self._traffic(pair, hour)
            result = self.processor.process(events)
            self.store.apply(result.writes.items(), {})
            now = self.start_ms + (hour + 1) * HOUR_MS
            for pair in self.pairs:
                routing = entity_key(pair.spec.id, pair.entity)
                state = self.processor.states.get(routing)
                if state is None:
                    continue
                done = publication_round(state, pair.spec, routing, now)
                for alert in done.alerts:
                    entry = (hour, alert["arm"], alert["guardrail"])
                    (pair.rollbacks if alert["action"] in ("rollback", "pause") else pair.alerts).append(entry)
            if on_hour is not None:
                on_hour(hour)
        self.store.close()

    def _traffic(self, pair: Pair, hour: int) -> list[InputEvent]:
        spec, rng = pair.spec, self.rng
        routing = entity_key(spec.id, pair.entity)
        state = self.processor.states.get(routing)
        weights = current_weights(state) if state is not None else {}
        arms = list(spec.arm_names)
        p = np.array([weights.get(a, 0.0) for a in arms]) if weights else np.full(len(arms), 1 / len(arms))
        p = p / p.sum()
        version = state.version if state is not None else 0
        truths = pair.truths(hour)
        out = []
        base = self.start_ms + hour * HOUR_MS
        for i, k in enumerate(rng.choice(len(arms), size=self.per_hour, p=p)):
            arm, truth = arms[int(k)], truths[arms[int(k)]]
            ts = base + int(i * HOUR_MS / self.per_hour)
            sid = format_serve_id(uuid.uuid4().hex[:24], ts, True, arm)
            out.append(self._event("serves", routing, self.writer.encode(
                sid, sid, spec.id, pair.entity, "u", arm, True, float(p[k]), version, 0, ts, None), ts))
            failed = bool(rng.random() < truth.error)
            pair.reports[arm][hour] += (1, failed)
            latency = float(truth.latency_median_ms * np.exp(truth.latency_sigma * rng.standard_normal()))
            out.append(self._reward(routing, sid, spec.id, pair.entity, REQUEST_OUTCOME, ts + 10, latency, failed))
            if rng.random() < truth.click:
                out.append(self._reward(routing, sid, spec.id, pair.entity, spec.reward.name, ts + 1_000, None, None, 1.0))
        return out

    def _reward(self, routing: bytes, sid: str, exp: str, entity: str, name: str, ts: int, latency: float | None,
                error: bool | None, value: float = 0.0) -> InputEvent:
        record: dict[str, Any] = {"event_id": sid, "serve_id": sid, "experiment_id": exp, "entity": entity, "name": name,
                                  "value": value, "timestamp": ts, "latency_ms": latency, "error": error}
        return self._event("rewards", routing, self.serde.encode("RewardEvent", record), ts)

    def _event(self, kind: str, key: bytes, value: bytes, ts: int) -> InputEvent:
        self._offset += 1
        return InputEvent(kind, kind, 0, self._offset, key, value, ts)
