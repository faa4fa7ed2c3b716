"""A traffic simulator: units ask for assignments, rewards come from known true rates.

A `Scenario` says, per experiment and entity, how likely each arm's serve is to be
rewarded, and optionally how that changes part-way through (the best model changes: the
window has to forget). `Simulator.run` walks simulated time in steps: each step, for every
entity of every experiment, units are assigned (by an `Assigner` source: the sidecar over
HTTP, or the same code in process), a ServeEvent is logged for each (by the sidecar, or
here), and each serve is rewarded with its arm's true probability. Simulated time runs
faster than the wall clock (a week in minutes); event time drives the windows.

An experiment that takes registered model versions as arms (a spec with `models:`) can
have its versions' true rates in the scenario's `models` section: a version's click rate
is its entity's `fresh` rate, losing `loss_per_day` of it for every day of age of its
training data (down to `floor` of it), so a model gets stale and a retrained one recovers.
Such arms come and go while the simulation runs: the simulator serves whatever arms the
live spec offers the entity.

It keeps the figures a demo summary needs: serves and rewards produced, regret of the
assignments against always serving the best arm, and the regret an equal-split A/B test
would have had over the same traffic. A few malformed events can be mixed in, to show the
dead-letter topic at work.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

from sluice.core.health import REQUEST_OUTCOME
from sluice.core.lifecycle import parse_arm
from sluice.core.spec import ExperimentSpec
from sluice.kafka.clients import entity_key
from sluice.kafka.io import AvroProducer
from sluice.kafka.topics import TopicNames

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


class ScenarioError(ValueError):
    """A scenario file that does not fit its experiments; the message names the field."""


@dataclass(frozen=True)
class Behaviour:
    """How an arm's served requests go: reward rate, failure rate, latency quantiles (ms)."""

    rate: float
    error_rate: float = 0.002
    latency_ms_p50: float = 40.0
    latency_ms_p95: float = 70.0

    @property
    def latency_sigma(self) -> float:
        """The log-normal spread that puts p95 where it is given."""
        return float(np.log(self.latency_ms_p95 / self.latency_ms_p50) / 1.6448536)


_BEHAVIOUR_FIELDS = {"rate", "error_rate", "latency_ms_p50", "latency_ms_p95"}


@dataclass(frozen=True)
class ModelDecay:
    """The true click rate of an entity's model versions by the age of their training data:
    `fresh` at age 0, less `loss_per_day` of it per day of age, never below `floor` of it."""

    fresh: float
    loss_per_day: float = 0.05
    floor: float = 0.5

    def rate(self, age_days: float) -> float:
        return self.fresh * max(self.floor, 1.0 - self.loss_per_day * max(0.0, age_days))


# The devices of the requests where model versions serve: name, share of the traffic, and
# the factor on the click rate (the factors average 1 over the shares, so an arm's rate is
# its mean).
DEVICES = (("mobile", 0.6, 0.4), ("desktop", 0.3, 1.6), ("tablet", 0.1, 2.8))

# When a model version's training data ended (epoch ms): (entity, model type, version) →
# data_end_ms, or None when the version is not known (yet).
DataEnd = Callable[[str, str, int], "int | None"]


@dataclass(frozen=True)
class Phase:
    """From simulated day `at_day` on, these arms behave otherwise (experiment → entity →
    arm → any of rate, error_rate, latency_ms_p50, latency_ms_p95)."""

    at_day: float
    arms: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]


@dataclass(frozen=True)
class Scenario:
    """True reward rates per experiment → entity → arm, before and after `change_at`
    (a fraction of the simulated span), and the traffic to simulate."""

    rates: Mapping[str, Mapping[str, Mapping[str, float]]]
    rates_after: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)
    change_at: float = 0.5
    days: float = 7.0
    serves_per_entity_hour: int = 60
    step_hours: float = 1.0
    malformed_every_steps: int = 24  # one malformed event of each kind this often; 0 = none
    phases: tuple[Phase, ...] = ()
    models: Mapping[str, Mapping[str, ModelDecay]] = field(default_factory=dict)  # experiment → entity → decay

    def __post_init__(self) -> None:
        decays: dict[str, dict[str, ModelDecay]] = {}
        for exp, entities in self.models.items():
            if not isinstance(entities, Mapping):
                raise ScenarioError(f"models.{exp}: expected {{entity: {{fresh, loss_per_day, floor}}}}, got {entities!r}")
            for entity, given in entities.items():
                if isinstance(given, ModelDecay):
                    decays.setdefault(exp, {})[entity] = given
                    continue
                unknown = sorted(set(given) - {"fresh", "loss_per_day", "floor"}) if isinstance(given, Mapping) else None
                if unknown is None or unknown or "fresh" not in given:
                    raise ScenarioError(f"models.{exp}.{entity}: expected {{fresh, loss_per_day, floor}} (fresh "
                                        f"required), got {given!r}")
                decay = ModelDecay(**{k: float(v) for k, v in given.items()})
                for name in ("fresh", "loss_per_day", "floor"):
                    if not 0 <= getattr(decay, name) <= 1:
                        raise ScenarioError(f"models.{exp}.{entity}.{name}: must be in [0, 1], got {getattr(decay, name)}")
                decays.setdefault(exp, {})[entity] = decay
        object.__setattr__(self, "models", decays)
        parsed = []
        for i, phase in enumerate(self.phases):
            if isinstance(phase, Phase):
                parsed.append(phase)
                continue
            if not isinstance(phase, Mapping) or set(phase) != {"at_day", "arms"}:
                raise ScenarioError(f"phases[{i}]: a phase is {{at_day: DAY, arms: {{experiment: {{entity: {{arm: "
                                    f"{{rate, error_rate, latency_ms_p50, latency_ms_p95}}}}}}}}}}, got {phase!r}")
            parsed.append(Phase(float(phase["at_day"]), phase["arms"]))
        object.__setattr__(self, "phases", tuple(sorted(parsed, key=lambda ph: ph.at_day)))

    @classmethod
    def load(cls, path: str | Path, specs: Mapping[str, ExperimentSpec]) -> Scenario:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "rates" not in data:
            raise ScenarioError(f"{path}: a scenario needs `rates: {{experiment: {{entity: {{arm: rate}}}}}}`")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ScenarioError(f"{path}: unknown field(s) {unknown}; a scenario has {sorted(known)}")
        scenario = cls(**data)
        scenario.check(specs)
        return scenario

    def check(self, specs: Mapping[str, ExperimentSpec]) -> None:
        for where, table in (("rates", self.rates), ("rates_after", self.rates_after)):
            for exp, entities in table.items():
                if exp not in specs:
                    raise ScenarioError(f"{where}.{exp}: no such experiment (specs: {sorted(specs)})")
                arms = set(specs[exp].arm_names)
                for entity, rates in entities.items():
                    if set(rates) != arms:
                        raise ScenarioError(f"{where}.{exp}.{entity}: rates for {sorted(rates)}, "
                                            f"but the arms are {sorted(arms)}")
                    bad = {a: r for a, r in rates.items() if not 0 <= r <= 1}
                    if bad:
                        raise ScenarioError(f"{where}.{exp}.{entity}: rates must be in [0, 1], got {bad}")
        if not 0 <= self.change_at <= 1:
            raise ScenarioError(f"change_at must be a fraction in [0, 1], got {self.change_at}")
        for exp, entities in self.models.items():
            if exp not in specs or specs[exp].models is None:
                raise ScenarioError(f"models.{exp}: no experiment of that id takes model versions as arms (a spec "
                                    f"with `models:`); those that do: {sorted(e for e, s in specs.items() if s.models)}")
            missing = sorted(set(entities) - set(self.rates.get(exp, {})))
            if missing:
                raise ScenarioError(f"models.{exp}: entities {missing} have no `rates` for the spec's own arms")
        for i, phase in enumerate(self.phases):
            for exp, entities in phase.arms.items():
                if exp not in specs:
                    raise ScenarioError(f"phases[{i}].arms.{exp}: no such experiment (specs: {sorted(specs)})")
                for entity, arms in entities.items():
                    for arm, given in arms.items():
                        where = f"phases[{i}].arms.{exp}.{entity}.{arm}"
                        if arm not in specs[exp].arm_names:
                            raise ScenarioError(f"{where}: no such arm (arms: {list(specs[exp].arm_names)})")
                        unknown = sorted(set(given) - _BEHAVIOUR_FIELDS)
                        if unknown:
                            raise ScenarioError(f"{where}: unknown field(s) {unknown}; use {sorted(_BEHAVIOUR_FIELDS)}")
                        for name in ("rate", "error_rate"):
                            if name in given and not 0 <= given[name] <= 1:
                                raise ScenarioError(f"{where}.{name}: must be in [0, 1], got {given[name]}")

    def behaviour(self, exp: str, entity: str, arm: str, fraction: float) -> Behaviour:
        """How `arm` behaves at `fraction` of the simulated span: its rate (rates, then
        rates_after from change_at), then every phase already begun."""
        fields_: dict[str, float] = {"rate": self.rate(exp, entity, arm, fraction)}
        day = fraction * self.days
        for phase in self.phases:
            if day >= phase.at_day:
                fields_.update(phase.arms.get(exp, {}).get(entity, {}).get(arm, {}))
        return Behaviour(**fields_)

    def rate(self, exp: str, entity: str, arm: str, fraction: float) -> float:
        after = self.rates_after.get(exp, {}).get(entity)
        table = after if after is not None and fraction >= self.change_at else self.rates[exp][entity]
        return table[arm]

    def best(self, exp: str, entity: str, fraction: float) -> str:
        """The arm with the most rewards per serve (a failed request earns none)."""
        arms = self.rates[exp][entity]

        def value(a: str) -> float:
            b = self.behaviour(exp, entity, a, fraction)
            return b.rate * (1 - b.error_rate)

        return max(arms, key=value)


@dataclass(frozen=True)
class Served:
    serve_id: str
    arm: str
    in_experiment: bool


class Assignments(Protocol):
    """Where the simulator gets its assignments; implementations also log the serves."""

    def assign(self, experiment: str, entity: str, unit_ids: list[str], timestamps_ms: list[int],
               contexts: list[dict[str, str]] | None = None) -> list[Served]: ...

    def close(self) -> None: ...


@dataclass
class Tally:
    """What the simulation produced, for the summary."""

    serves: Counter[str] = field(default_factory=Counter)  # by experiment
    rewards: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)  # reports of latency and errors, by experiment
    malformed: Counter[str] = field(default_factory=Counter)  # by the reason the worker should give
    regret: Counter[str] = field(default_factory=Counter)  # expected, by experiment
    regret_equal_split: Counter[str] = field(default_factory=Counter)
    last_arm_counts: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    best_last: dict[tuple[str, str], str] = field(default_factory=dict)  # the truly best arm at the last step


class Simulator:
    """See the module docstring. `on_step(fraction, tally)` is called after every step."""

    def __init__(self, specs: Mapping[str, ExperimentSpec], scenario: Scenario, assignments: Assignments,
                 rewards: AvroProducer, names: TopicNames, *, seed: int = 7, data_end: DataEnd | None = None) -> None:
        """`specs` may be replaced while running (`self.specs[id] = newer`): each step serves
        the arms the current spec offers. `data_end` says when a model version's training
        data ended, for the rates of the scenario's `models`."""
        self.specs, self.scenario, self.assignments = dict(specs), scenario, assignments
        self.rewards, self.names, self.data_end = rewards, names, data_end
        self.rng = np.random.default_rng(seed)
        self.tally = Tally()
        self.now_ms = 0  # the simulated time: the start of the current step
        self._unit = 0

    def run(self, start_ms: int, *, wall_seconds: float, on_step: Callable[[float, Tally], None] | None = None) -> Tally:
        sc = self.scenario
        steps = max(1, round(sc.days * 24 / sc.step_hours))
        step_ms = round(sc.step_hours * HOUR_MS)
        per_step = max(1, round(sc.serves_per_entity_hour * sc.step_hours))
        wall_per_step = wall_seconds / steps
        for step in range(steps):
            began = time.monotonic()
            fraction = step / steps
            t0 = start_ms + step * step_ms
            self.now_ms = t0
            for exp, entities in sc.rates.items():
                for entity in entities:
                    self._traffic(exp, entity, t0, step_ms, per_step, fraction, last=step >= steps - 24 / sc.step_hours)
            if sc.malformed_every_steps and step % sc.malformed_every_steps == sc.malformed_every_steps // 2:
                self._malformed(t0)
            self.rewards.flush()
            if on_step is not None:
                on_step((step + 1) / steps, self.tally)
            time.sleep(max(0.0, wall_per_step - (time.monotonic() - began)))
        return self.tally

    def _traffic(self, exp: str, entity: str, t0: int, step_ms: int, n: int, fraction: float, last: bool) -> None:
        tally = self.tally
        units = [f"user-{self._unit + i}" for i in range(n)]
        self._unit += n
        times = np.sort(t0 + self.rng.integers(0, step_ms, n))
        # Where model versions serve, requests carry the context they learn from: the device,
        # whose clicks differ (DEVICES), so the demo trainer has something real to fit.
        devices = self.rng.choice(len(DEVICES), n, p=[d[1] for d in DEVICES]) if exp in self.scenario.models else None
        contexts = None if devices is None else [{"device": DEVICES[d][0]} for d in devices]
        served = self.assignments.assign(exp, entity, units, times.tolist(), contexts)
        arms = set(self.specs[exp].arms_of(entity)) | {s.arm for s in served}  # the sidecar may know a newer spec
        behaviour = {a: self._behaviour(exp, entity, a, fraction, t0) for a in sorted(arms)}
        value = {a: b.rate * (1 - b.error_rate) for a, b in behaviour.items()}
        best = max(value.values())
        equal_split = best - float(np.mean(list(value.values())))
        if last:
            tally.best_last[(exp, entity)] = max(value, key=value.__getitem__)
        key = entity_key(exp, entity)
        reward_name = self.specs[exp].reward.name
        for j, (s, ts) in enumerate(zip(served, times)):
            b = behaviour[s.arm]
            lift = 1.0 if devices is None else DEVICES[devices[j]][2]
            tally.serves[exp] += 1
            tally.regret[exp] += best - value[s.arm]
            tally.regret_equal_split[exp] += equal_split
            if last:
                tally.last_arm_counts.setdefault((exp, entity), Counter())[s.arm] += 1
            # The service reports how the request went, as a real one would: latency, failure.
            failed = bool(self.rng.random() < b.error_rate)
            latency = float(b.latency_ms_p50 * np.exp(b.latency_sigma * self.rng.standard_normal()))
            self.rewards.send(self.names.rewards, key, "RewardEvent", {
                "event_id": str(uuid.uuid4()), "serve_id": s.serve_id, "experiment_id": exp, "entity": entity,
                "name": REQUEST_OUTCOME, "value": 0.0, "timestamp": int(ts) + int(latency),
                "latency_ms": latency, "error": failed,
            })
            tally.outcomes[exp] += 1
            if not failed and self.rng.random() < b.rate * lift:
                delay = int(self.rng.integers(1_000, 30 * 60_000))  # a click within half an hour
                self.rewards.send(self.names.rewards, key, "RewardEvent", {
                    "event_id": str(uuid.uuid4()), "serve_id": s.serve_id, "experiment_id": exp, "entity": entity,
                    "name": reward_name, "value": 1.0, "timestamp": int(ts) + delay,
                    "latency_ms": None, "error": None,
                })
                tally.rewards[exp] += 1

    def _behaviour(self, exp: str, entity: str, arm: str, fraction: float, now_ms: int) -> Behaviour:
        """An arm's behaviour now: the scenario's, or for a model version its decayed rate."""
        decay = self.scenario.models.get(exp, {}).get(entity)
        parsed = parse_arm(arm) if decay is not None and arm not in self.scenario.rates[exp][entity] else None
        if parsed is None:
            return self.scenario.behaviour(exp, entity, arm, fraction)
        end = self.data_end(entity, *parsed) if self.data_end is not None else None
        return Behaviour(decay.rate(0.0 if end is None else (now_ms - end) / DAY_MS))

    def _malformed(self, t0: int) -> None:
        """One of each: bytes that are not Avro, a serve of an arm the experiment lacks, and
        a reward whose value is not a number."""
        exp = next(iter(self.scenario.rates))
        entity = next(iter(self.scenario.rates[exp]))
        key = entity_key(exp, entity)
        self.rewards.send_raw(self.names.serves, key, b"\x00 this is not an Avro message")
        self.tally.malformed["undecodable"] += 1
        sid = str(uuid.uuid4())
        self.rewards.send(self.names.serves, key, "ServeEvent", {
            "event_id": sid, "serve_id": sid, "experiment_id": exp, "entity": entity, "unit_id": "user-x",
            "arm": "no-such-arm", "in_experiment": True, "propensity": 0.5, "weights_version": 0, "bucket": 0,
            "timestamp": t0, "context": {},
        })
        self.tally.malformed["unknown_arm"] += 1
        self.rewards.send(self.names.rewards, key, "RewardEvent", {
            "event_id": str(uuid.uuid4()), "serve_id": sid, "experiment_id": exp, "entity": entity,
            "name": self.specs[exp].reward.name, "value": float("nan"), "timestamp": t0,
            "latency_ms": None, "error": None,
        })
        self.tally.malformed["invalid_value"] += 1


def load_specs(paths: list[Path]) -> dict[str, ExperimentSpec]:
    from sluice.specfile import load_spec_file

    specs = {}
    for path in paths:
        spec = load_spec_file(path)
        specs[spec.id] = spec
    return specs


def describe(tally: Tally, scenario: Scenario, specs: Mapping[str, ExperimentSpec]) -> dict[str, Any]:
    """Chosen arm per entity (most served over the last simulated day) against the truth;
    a static split chooses nothing by design (its decision comes from the statistics)."""
    out = {}
    for (exp, entity), counts in sorted(tally.last_arm_counts.items()):
        chosen = counts.most_common(1)[0][0]
        static = specs[exp].policy.name == "static"
        out[f"{exp}/{entity}"] = {"chosen": "(static split)" if static else chosen,
                                  "share": counts[chosen] / sum(counts.values()),
                                  "best": tally.best_last.get((exp, entity)) or scenario.best(exp, entity, 1.0),
                                  "static": static}
    return out
