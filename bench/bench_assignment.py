"""Assignment speed: one `Assigner.assign` call, and `assign_batch` throughput, each next to
a plain `hashlib.sha1` loop over the same unit ids (the floor: CPython hashes one message
per call and numpy cannot compute SHA-1).

Figures are the best of a few repetitions (the least disturbed by other processes).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from bench._figures import Figure
from sluice.core.allocation import allocate
from sluice.core.assignment import Assigner, LayerSlice

SUITE = "assignment"


def _best_ns(fn: Callable[[], object], repeats: int) -> int:
    best = None
    for _ in range(repeats):
        started = time.perf_counter_ns()
        fn()
        elapsed = time.perf_counter_ns() - started
        best = elapsed if best is None else min(best, elapsed)
    assert best is not None
    return best


def run(quick: bool) -> list[Figure]:
    n_units = 50_000 if quick else 1_000_000
    repeats = 2 if quick else 5
    units = [f"user-{i:08d}" for i in range(n_units)]
    arms = ("baseline", "two-tower", "two-tower-wide", "transformer")
    allocation = allocate([0.4, 0.3, 0.2, 0.1], 10_000)
    plain = Assigner("ranking-model-bandit", allocation, arms, "baseline")
    gated = Assigner(
        "ranking-model-bandit", allocation, arms, "baseline", traffic_fraction=0.5, layer=LayerSlice("home", 0, 5000)
    )
    sha1 = hashlib.sha1

    def sha1_loop() -> None:
        for u in units:
            sha1(u.encode()).digest()

    def single(assigner: Assigner) -> Callable[[], None]:
        assign = assigner.assign

        def loop() -> None:
            for u in units:
                assign(u)

        return loop

    baseline_ns = _best_ns(sha1_loop, repeats) / n_units
    single_ns = _best_ns(single(plain), repeats) / n_units
    gated_ns = _best_ns(single(gated), repeats) / n_units
    batch_ns = _best_ns(lambda: plain.assign_batch(units), repeats) / n_units
    gated_batch_ns = _best_ns(lambda: gated.assign_batch(units), repeats) / n_units
    size = f"{n_units:,} unit ids, 4 arms, N = 10,000, best of {repeats}"
    return [
        Figure(
            SUITE,
            "single assign (one SHA-1)",
            single_ns / 1000,
            "µs/call",
            "lower",
            "hashlib.sha1 loop",
            baseline_ns / 1000,
            goal=2.0,
            note=size,
        ),
        Figure(
            SUITE,
            "single assign, traffic 50 % + layer (three SHA-1)",
            gated_ns / 1000,
            "µs/call",
            "lower",
            "hashlib.sha1 loop",
            baseline_ns / 1000,
            note="informative: two extra hashes decide traffic and layer",
        ),
        Figure(
            SUITE,
            "batch assign (one SHA-1)",
            1e9 / batch_ns,
            "assignments/s",
            "higher",
            "hashlib.sha1 loop",
            1e9 / baseline_ns,
            goal=2_000_000,
            note=f"{size}; the baseline is the ceiling of one core",
        ),
        Figure(
            SUITE,
            "batch assign, traffic 50 % + layer (three SHA-1)",
            1e9 / gated_batch_ns,
            "assignments/s",
            "higher",
            "hashlib.sha1 loop",
            1e9 / baseline_ns,
            note="informative: three hashes per unit",
        ),
    ]
