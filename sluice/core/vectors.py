"""Builds the assignment test vectors stored in `sluice/core/data/bucket_vectors.json`.

The stored file is the contract that every SDK (Python, Go, TypeScript...) checks itself
against; tests compare the implementation with the file, they never regenerate it. Build it
again only when adding cases, and check that no existing case changed:

    .venv/bin/python -c "import json; from sluice.core.vectors import bucket_vectors; \\
      open('sluice/core/data/bucket_vectors.json', 'w').write(json.dumps(bucket_vectors(), \\
      indent=1, ensure_ascii=False) + '\\n')"
"""

from __future__ import annotations

import hashlib
from typing import Any

from sluice.core.allocation import Allocation, allocate, quantize_weights, reallocate
from sluice.core.assignment import Assigner, LayerSlice, bucket_of, layer_salt, traffic_salt, traffic_threshold

DESCRIPTION = (
    "Assignment test vectors for Sluice. bucket = int.from_bytes(SHA1(utf8(salt + ':' + unit_id))[0:8], "
    "'big') mod num_buckets (no Unicode normalisation). hash64_hex is those 8 digest bytes in hex. "
    "Traffic: traffic_bucket = bucket(salt + '/traffic', unit_id, num_buckets); in experiment iff "
    "traffic_bucket < floor(traffic_fraction * num_buckets + 0.5). Layer: layer_bucket = "
    "bucket('layer/' + layer_name, unit_id, layer_num_buckets); in experiment only if start <= "
    "layer_bucket < end. Arm: the arm whose ranges contain bucket; ranges are half-open [start, end). "
    "Units in the experiment log propensity = arm buckets / num_buckets; units outside get the "
    "default arm with propensity 1."
)

UNIT_IDS = [
    "",
    "0",
    "1",
    "42",
    "user-1",
    "user-2",
    "user-12345",
    "00000000-0000-0000-0000-000000000000",
    "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
    "advertiser:17/campaign:9",
    "with space",
    "ünïcödé",
    "naïve café",  # precomposed é (U+00E9)
    "nai\u0308ve cafe\u0301",  # the same text decomposed: hashes differently (no normalisation)
    "日本語ユーザー",
    "пользователь-7",
    "emoji-😀-user",
    "tab\tand\nnewline",
    "x" * 200,
]

SALTS = ["exp-1", "ranking-model-2024", "Ünicode-salt", ""]
NUM_BUCKETS = [10_000, 100, 7, 1_000_003]


def _hash64_hex(salt: str, unit_id: str) -> str:
    return hashlib.sha1(f"{salt}:{unit_id}".encode()).digest()[:8].hex()


def bucket_vectors() -> dict[str, Any]:
    """All test vectors as a JSON-ready dict (deterministic: no randomness, no clock)."""
    buckets = [
        {
            "salt": salt,
            "unit_id": unit,
            "num_buckets": n,
            "hash64_hex": _hash64_hex(salt, unit),
            "bucket": bucket_of(salt, unit, n),
        }
        for salt in SALTS
        for n in NUM_BUCKETS
        for unit in UNIT_IDS
    ]
    traffic = []
    for fraction in (0.1, 0.5, 0.333):
        threshold = traffic_threshold(fraction, 10_000)
        for unit in UNIT_IDS:
            tb = bucket_of(traffic_salt("exp-1"), unit, 10_000)
            traffic.append(
                {
                    "salt": "exp-1",
                    "unit_id": unit,
                    "num_buckets": 10_000,
                    "traffic_fraction": fraction,
                    "traffic_threshold": threshold,
                    "traffic_bucket": tb,
                    "in_experiment": tb < threshold,
                }
            )
    layers = [
        {
            "layer_name": "homepage",
            "layer_num_buckets": 1000,
            "unit_id": unit,
            "layer_bucket": bucket_of(layer_salt("homepage"), unit, 1000),
        }
        for unit in UNIT_IDS
    ]
    return {
        "description": DESCRIPTION,
        "buckets": buckets,
        "traffic": traffic,
        "layers": layers,
        "quantization": _quantization_cases(),
        "assignments": [_assignment_case(**case) for case in _assignment_setups()],
    }


def _quantization_cases() -> list[dict[str, Any]]:
    weights_cases = [
        ([0.5, 0.5], 10_000),
        ([1 / 3, 1 / 3, 1 / 3], 10_000),
        ([0.1, 0.2, 0.3, 0.4], 7),
        ([0.0, 0.7, 0.3], 10),
        ([0.33335, 0.33335, 0.3333], 10_000),
    ]
    return [{"weights": w, "num_buckets": n, "counts": quantize_weights(w, n).tolist()} for w, n in weights_cases]


def _assignment_setups() -> list[dict[str, Any]]:
    # A history of reallocations gives fragmented ranges, the case readers must get right.
    history = allocate([0.25, 0.25, 0.25, 0.25], 10_000)
    for w in ([0.4, 0.2, 0.2, 0.2], [0.1, 0.5, 0.1, 0.3], [0.3, 0.1, 0.5, 0.1], [0.25, 0.25, 0.25, 0.25]):
        history = reallocate(history, quantize_weights(w, 10_000))
    return [
        {
            "name": "ab-50-50",
            "salt": "exp-1",
            "allocation": allocate([0.5, 0.5], 10_000),
            "arms": ["control", "treatment"],
        },
        {
            "name": "fragmented-4-arms",
            "salt": "ranking-model-2024",
            "allocation": history,
            "arms": ["m1", "m2", "m3", "m4"],
        },
        {
            "name": "traffic-20-percent",
            "salt": "exp-1",
            "allocation": allocate([0.3, 0.7], 100),
            "arms": ["control", "treatment"],
            "traffic_fraction": 0.2,
        },
        {
            "name": "layer-slice",
            "salt": "exp-2",
            "allocation": allocate([0.6, 0.4], 10_000),
            "arms": ["a", "b"],
            "layer": LayerSlice("homepage", 250, 750, 1000),
        },
    ]


def _assignment_case(
    name: str,
    salt: str,
    allocation: Allocation,
    arms: list[str],
    traffic_fraction: float = 1.0,
    layer: LayerSlice | None = None,
) -> dict[str, Any]:
    assigner = Assigner(salt, allocation, tuple(arms), arms[0], traffic_fraction, layer)
    cases = []
    for unit in UNIT_IDS + [f"user-{i}" for i in range(40)]:
        a = assigner.assign(unit)
        cases.append(
            {
                "unit_id": unit,
                "bucket": a.bucket,
                "arm": a.arm,
                "in_experiment": a.in_experiment,
                "propensity": a.propensity,
            }
        )
    return {
        "name": name,
        "salt": salt,
        "num_buckets": allocation.num_buckets,
        "arms": [{"arm": arm, "ranges": r} for arm, r in zip(arms, allocation.to_lists())],
        "default_arm": arms[0],
        "traffic_fraction": traffic_fraction,
        "layer": None
        if layer is None
        else {"name": layer.name, "start": layer.start, "end": layer.end, "num_buckets": layer.num_buckets},
        "cases": cases,
    }
