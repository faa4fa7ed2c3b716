"""Health guardrails: false rollbacks of healthy arms under continuous monitoring, and how
fast a failing arm is rolled back, each next to a fixed-horizon test on the same data.

- A/A: 200 (experiment, entity) pairs (half a static A/B/C split, half a Thompson bandit),
  three identical arms, 14 simulated days, looked at every simulated hour through the
  worker's own code (`bench._health_sim`). The share of pairs that had any arm rolled back,
  against α; beside it, what a one-sided binomial test at α would do if looked at every hour
  on the same error reports.
- Detection: arm b of a static split starts failing on day 3 (8 % or 3 % errors, threshold
  1 %); simulated hours from the failure's start to the rollback, against a fixed-horizon
  test run once a day on that day's reports with a Bonferroni level (α / 14: the same
  false-alarm budget over two weeks).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.progress import Progress
from scipy import stats

from bench._figures import Figure
from bench._health_sim import Pair, Simulation, Truth
from sluice.core.spec import spec_from_mapping

SUITE = "health"
ALPHA = 0.01
HEALTH = {
    "error_rate": {"threshold": 0.01, "alpha": ALPHA, "action": "rollback"},
    "latency": {"threshold": 120, "quantile": 0.95, "alpha": ALPHA, "action": "rollback"},
    "reward_drop": {"threshold": 0.05, "alpha": ALPHA, "action": "rollback"},
    "srm": {"alpha": ALPHA, "action": "alert"},
    "quiet": None,
}


def _spec(exp: str, policy: str, health: dict) -> object:
    return spec_from_mapping({
        "id": exp, "status": "running", "salt": exp, "unit": "user_id", "entity": "site",
        "parameters": [{"name": "model", "type": "string"}],
        "arms": [{"name": a, "values": {"model": a}} for a in "abc"], "default_arm": "a",
        "policy": {"name": policy, "params": {}}, "reward": {"type": "binary", "name": "click"},
        "guardrails": {"floor": 0.05}, "health": health,
    })


def _run(pairs: list[Pair], hours: int, per_hour: int, label: str, seed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="sluice-bench-health-") as tmp, Progress(transient=True) as progress:
        task = progress.add_task(label, total=hours)
        Simulation(pairs, Path(tmp), serves_per_hour=per_hour, hours=hours, seed=seed).run(
            lambda h: progress.update(task, completed=h + 1))


def _naive_hourly_false_alarms(pairs: list[Pair]) -> float:
    """Pairs where a one-sided binomial test of the cumulative error reports against 1 %,
    at level α, looked at every hour, would have fired for some arm."""
    fired = 0
    for pair in pairs:
        for reports in pair.reports.values():
            n, k = np.cumsum(reports[:, 0]), np.cumsum(reports[:, 1])
            p = stats.binom.sf(k - 1, n, 0.01)
            if np.any((n > 0) & (p < ALPHA)):
                fired += 1
                break
    return fired / len(pairs)


def _daily_fixed_horizon_delay(pair: Pair, arm: str, start_hour: int, days: int) -> float | None:
    """Hours from the failure's start to the end of the first day whose reports alone reject
    "error rate ≤ 1 %" at α / days (one test a day, Bonferroni over the days)."""
    reports = pair.reports[arm]
    for day in range(days):
        lo, hi = day * 24, (day + 1) * 24
        n, k = reports[lo:hi, 0].sum(), reports[lo:hi, 1].sum()
        if hi > start_hour and n and stats.binom.sf(k - 1, n, 0.01) < ALPHA / days:
            return float(hi - start_hour)
    return None


def run(quick: bool) -> list[Figure]:
    figures: list[Figure] = []
    n_pairs, days = (60, 7) if quick else (200, 14)
    hours = days * 24
    healthy = {a: Truth() for a in "abc"}
    specs = [_spec("aa-static", "static", HEALTH), _spec("aa-bandit", "thompson", HEALTH)]
    pairs = [Pair(specs[i % 2], f"site-{i}", lambda h: healthy) for i in range(n_pairs)]
    _run(pairs, hours, 40, f"A/A: {n_pairs} pairs, {days} days", seed=1)
    rolled = sum(bool(p.rollbacks) for p in pairs) / n_pairs
    by_rule = sum(len(p.rollbacks) for p in pairs) / (n_pairs * 3 * 3)
    alerts = sum(bool(p.alerts) for p in pairs)
    naive = _naive_hourly_false_alarms(pairs)
    print(f"   A/A: {rolled:.3f} of pairs rolled back; naive hourly binomial test {naive:.3f}", file=sys.stderr)
    figures.append(Figure(
        SUITE, f"A/A false-rollback rate: {n_pairs} pairs x {days} days, every guardrail looked at every hour", rolled,
        "share of pairs", "lower", "a binomial test at α looked at every hour (error rate only)", naive, goal=ALPHA,
        note=f"α = {ALPHA} per guardrail and entity (α/3 per arm); per (pair, arm, guardrail): {by_rule:.4f}; "
             f"pairs with an SRM alert: {alerts}; 40 serves an hour per pair"))

    n_fail = 8 if quick else 30
    fail_days, start_hour = 7, 72
    for error in (0.08, 0.03):
        spec = _spec(f"fail-{int(error * 100)}", "static", {**HEALTH, "reward_drop": None, "srm": None})
        failing = {**healthy, "b": Truth(error=error)}
        fail_pairs = [Pair(spec, f"site-{i}", lambda h, f=failing: f if h >= start_hour else healthy)
                      for i in range(n_fail)]
        _run(fail_pairs, fail_days * 24, 60, f"b fails at {error:.0%}", seed=2)
        delays = [next((h + 1 - start_hour for h, arm, rule in p.rollbacks if arm == "b"), None) for p in fail_pairs]
        fixed = [_daily_fixed_horizon_delay(p, "b", start_hour, 14) for p in fail_pairs]
        found = [d for d in delays if d is not None]
        found_fixed = [d for d in fixed if d is not None]
        early = sum(1 for p in fail_pairs for h, arm, _ in p.rollbacks if h < start_hour or arm != "b")
        figures.append(Figure(
            SUITE, f"detection delay, b at {error:.0%} errors (threshold 1 %), ~20 reports of b an hour",
            statistics.median(found) if found else float("nan"), "simulated hours", "lower",
            "fixed horizon: one binomial test a day at α/14", statistics.median(found_fixed) if found_fixed else None,
            note=f"{len(found)}/{n_fail} found (fixed horizon {len(found_fixed)}/{n_fail}); "
                 f"max {max(found) if found else '-'} h; wrong or early rollbacks: {early}"))
    return figures
