"""The training scheduler's decision (`sluice.core.scheduler.plan`) over 10,000 entities × 5
model types: due rules, worth and grouping of similar datasets into jobs, next to the same
rules written as a plain per-model Python loop in the same run (dicts per model, a policy
lookup each, the same grouping), which checks that both choose the same models in the same
order. Building the fleet is not timed.
"""

from __future__ import annotations

import math
import time

import numpy as np

from bench._figures import Figure
from sluice.core.scheduler import DAY_MS, Fleet, Grouping, Policies, TrainingPolicy, plan

SUITE = "scheduler"
TYPES = ["gbdt", "two-tower", "wide-deep", "transformer", "logreg"]
NOW = 1_800_000_000_000


def _fleet(n_entities: int, rng: np.random.Generator) -> tuple[Fleet, Policies]:
    n = n_entities * len(TYPES)
    policies = Policies({t: TrainingPolicy(every_days=float(7 + 2 * i), new_rows=50_000, reward_drop=0.1)
                         for i, t in enumerate(TYPES)},
                        {(f"e{i}", "gbdt"): TrainingPolicy(every_days=1.0) for i in range(0, n_entities, 100)})
    reward_trained = rng.uniform(0.01, 0.1, n)
    fleet = Fleet.of([f"e{i // len(TYPES)}" for i in range(n)], TYPES * n_entities,
                     trained_at_ms=NOW - rng.integers(0, 20 * DAY_MS, n), rows_since=rng.integers(0, 80_000, n),
                     rows=rng.integers(1_000, 1_000_000, n),
                     feature_set=rng.choice(["clicks@1", "clicks@2", "views@1"], n).tolist(),
                     window_days=rng.choice([14.0, 28.0], n), serves_per_day=rng.exponential(1000, n),
                     reward_now=reward_trained * rng.uniform(0.8, 1.05, n), reward_trained=reward_trained,
                     best_reward=reward_trained * rng.uniform(1.0, 1.3, n))
    return fleet, policies


def _loop(fleet: Fleet, policies: Policies, grouping: Grouping, gap_share: float = 0.5,
          assumed_decay: float = 0.02) -> tuple[list[int], int]:
    """The same decision, one model at a time."""
    models = [{"i": i, "entity": fleet.entity[i], "type": fleet.model_type[i], "age": (NOW - int(fleet.trained_at_ms[i])) / DAY_MS,
               "rows_since": int(fleet.rows_since[i]), "rows": int(fleet.rows[i]), "fs": fleet.feature_set[i],
               "window": float(fleet.window_days[i]), "traffic": float(fleet.serves_per_day[i]),
               "now": float(fleet.reward_now[i]), "trained": float(fleet.reward_trained[i]),
               "best": float(fleet.best_reward[i])} for i in range(len(fleet))]
    due = []
    for m in models:
        p = policies.of(m["entity"], m["type"])
        drop = max(m["trained"] - m["now"], 0.0)
        rel = drop / m["trained"] if m["trained"] > 0 else 0.0
        fired = ((p.every_days is not None and m["age"] >= p.every_days)
                 or (p.new_rows is not None and m["rows_since"] >= p.new_rows)
                 or (p.reward_drop is not None and rel >= p.reward_drop))
        if not fired:
            continue
        periods = m["age"] / p.every_days if p.every_days else 0.0
        stale = 0.0 if drop > 0 else assumed_decay * max(periods, 0.0) * m["now"]
        m["gain"] = m["traffic"] * (drop + gap_share * max(m["best"] - m["now"], 0.0) + stale)
        due.append(m)
    due.sort(key=lambda m: -m["gain"])
    groups: dict[tuple, list[dict]] = {}
    for m in due:
        groups.setdefault((m["type"], m["fs"], m["window"]), []).append(m)
    jobs = 0
    for members in groups.values():
        members.sort(key=lambda m: m["rows"])
        size = total = smallest = 0
        for m in members:
            if size and (m["rows"] > grouping.size_ratio * max(smallest, 1) or size >= grouping.max_group
                         or total + m["rows"] > grouping.max_job_rows):
                jobs, size = jobs + 1, 0
            if not size:
                smallest, total = m["rows"], 0
            size, total = size + 1, total + m["rows"]
        jobs += 1 if size else 0
    return [m["i"] for m in due], jobs


def run(quick: bool) -> list[Figure]:
    n_entities = 1_000 if quick else 10_000
    fleet, policies = _fleet(n_entities, np.random.default_rng(5))
    grouping = Grouping()
    repeats = 3
    best_core = best_loop = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        result = plan(fleet, policies, NOW, grouping=grouping)
        best_core = min(best_core, time.perf_counter() - started)
        started = time.perf_counter()
        order, jobs = _loop(fleet, policies, grouping)
        best_loop = min(best_loop, time.perf_counter() - started)
    if order != result.order.tolist() or jobs != len(result.jobs):
        raise AssertionError(f"the loop and plan() disagree: {len(order)} vs {len(result.order)} due, "
                             f"{jobs} vs {len(result.jobs)} jobs")
    grouped = sum(len(j.members) for j in result.jobs)
    return [Figure(SUITE, f"plan: due, worth and jobs for {n_entities:,} entities × {len(TYPES)} model types", best_core,
                   "s", "lower", "the same rules as a per-model Python loop", best_loop,
                   goal=None if quick else 1.0,
                   note=f"best of {repeats}; {len(result.order):,} due in {len(result.jobs):,} jobs "
                        f"({grouped / max(1, len(result.jobs)):.1f} models a job); the loop agrees on order and jobs")]
