"""Assignment: the bucket hash contract, uniformity, independence, traffic and layers."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from sluice.core.allocation import Allocation, allocate, quantize_weights, reallocate
from sluice.core.assignment import (
    Assigner,
    AssignmentError,
    LayerSlice,
    bucket_of,
    buckets_of,
    layer_conflicts,
    split_layer,
    traffic_threshold,
)

UNITS = [f"user-{i}" for i in range(200_000)]


@pytest.fixture(scope="module")
def vectors() -> dict:
    return json.loads(resources.files("sluice.core").joinpath("data/bucket_vectors.json").read_text("utf-8"))


# --- the contract: the stored vectors -----------------------------------------------------


def test_bucket_formula_is_the_documented_one() -> None:
    # Spelled out independently of the implementation, as another language would write it.
    digest = hashlib.sha1("exp-1:user-1".encode("utf-8")).digest()
    assert bucket_of("exp-1", "user-1", 10_000) == int.from_bytes(digest[:8], "big") % 10_000


def test_buckets_match_the_stored_vectors(vectors: dict) -> None:
    cases = vectors["buckets"]
    assert len(cases) >= 200
    assert any(any(ord(c) > 127 for c in case["unit_id"]) for case in cases)
    for case in cases:
        salt, unit, n = case["salt"], case["unit_id"], case["num_buckets"]
        assert hashlib.sha1(f"{salt}:{unit}".encode()).digest()[:8].hex() == case["hash64_hex"], case
        assert bucket_of(salt, unit, n) == case["bucket"], case
    # the batch form agrees too, per (salt, N) group
    for salt in {c["salt"] for c in cases}:
        for n in {c["num_buckets"] for c in cases}:
            group = [c for c in cases if c["salt"] == salt and c["num_buckets"] == n]
            assert buckets_of(salt, [c["unit_id"] for c in group], n).tolist() == [c["bucket"] for c in group]


def test_traffic_and_layer_hashes_match_the_stored_vectors(vectors: dict) -> None:
    for case in vectors["traffic"]:
        threshold = traffic_threshold(case["traffic_fraction"], case["num_buckets"])
        assert threshold == case["traffic_threshold"]
        tb = bucket_of(case["salt"] + "/traffic", case["unit_id"], case["num_buckets"])
        assert (tb, tb < threshold) == (case["traffic_bucket"], case["in_experiment"])
    for case in vectors["layers"]:
        assert bucket_of("layer/" + case["layer_name"], case["unit_id"], case["layer_num_buckets"]) == case["layer_bucket"]


def test_arms_match_the_stored_vectors(vectors: dict) -> None:
    assert {c["name"] for c in vectors["assignments"]} >= {"ab-50-50", "fragmented-4-arms", "traffic-20-percent"}
    for setup in vectors["assignments"]:
        allocation = Allocation.from_ranges([a["ranges"] for a in setup["arms"]], setup["num_buckets"])
        layer = None if setup["layer"] is None else LayerSlice(**setup["layer"])
        arms = tuple(a["arm"] for a in setup["arms"])
        assigner = Assigner(setup["salt"], allocation, arms, setup["default_arm"], setup["traffic_fraction"], layer)
        batch = assigner.assign_batch([c["unit_id"] for c in setup["cases"]])
        for i, case in enumerate(setup["cases"]):
            got = assigner.assign(case["unit_id"])
            expected = (case["bucket"], case["arm"], case["in_experiment"], case["propensity"])
            assert (got.bucket, got.arm, got.in_experiment, got.propensity) == expected, (setup["name"], case)
            assert assigner.locate(case["unit_id"]) == (arms.index(case["arm"]), case["in_experiment"], case["bucket"])
            assert (int(batch.bucket[i]), str(batch.arm_names()[i]), bool(batch.in_experiment[i])) == expected[:3]
        # every setup exercises more than one outcome, so the vectors can catch a mix-up
        assert len({c["arm"] for c in setup["cases"]}) > 1


def test_quantization_matches_the_stored_vectors(vectors: dict) -> None:
    for case in vectors["quantization"]:
        assert quantize_weights(case["weights"], case["num_buckets"]).tolist() == case["counts"]


# --- statistical properties -----------------------------------------------------------------


@pytest.mark.parametrize("n", [10_000, 1000, 7])
def test_buckets_are_uniform(n: int) -> None:
    counts = np.bincount(buckets_of("uniformity", UNITS, n), minlength=n)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_buckets_under_two_salts_are_independent() -> None:
    a = buckets_of("experiment-a", UNITS, 10_000) // 1000
    b = buckets_of("experiment-b", UNITS, 10_000) // 1000
    table = np.zeros((10, 10))
    np.add.at(table, (a, b), 1)
    assert stats.chi2_contingency(table).pvalue > 1e-4
    # a shared salt would make them identical: the test can tell
    assert not np.array_equal(a, b)


def test_traffic_hash_is_independent_of_the_arm() -> None:
    assigner = Assigner("exp-x", allocate([0.5, 0.5], 10_000), ("a", "b"), "a", traffic_fraction=0.5)
    batch = assigner.assign_batch(UNITS[:100_000])
    inside = batch.in_experiment
    assert abs(inside.mean() - 0.5) < 0.01
    # among units in the experiment, the arm split is still the allocation's 50/50
    arm_of_bucket = assigner.allocation.dense()[batch.bucket]
    table = np.array([[np.sum(inside & (arm_of_bucket == k)), np.sum(~inside & (arm_of_bucket == k))] for k in (0, 1)])
    assert stats.chi2_contingency(table).pvalue > 1e-4


# --- the Assigner -----------------------------------------------------------------------


@settings(derandomize=True, max_examples=100, deadline=None)
@given(units=st.lists(st.text(st.characters(exclude_categories=["Cs"]), max_size=40), min_size=1, max_size=30))
def test_batch_equals_single_for_any_unicode_ids(units: list[str]) -> None:
    assigner = Assigner("s", allocate([0.2, 0.3, 0.5], 1000), ("a", "b", "c"), "a", 0.7, LayerSlice("L", 100, 900, 1000))
    batch = assigner.assign_batch(np.array(units, dtype=object))
    for i, unit in enumerate(units):
        one = assigner.assign(unit)
        assert assigner.locate(unit) == (one.arm_index, one.in_experiment, one.bucket)
        assert (one.arm_index, one.propensity, one.in_experiment, one.bucket) == (
            batch.arm_index[i],
            batch.propensity[i],
            batch.in_experiment[i],
            batch.bucket[i],
        )


def test_integer_ids_hash_as_their_decimal_text() -> None:
    ids = np.arange(1000, 1100)
    assert buckets_of("s", ids).tolist() == [bucket_of("s", str(i)) for i in range(1000, 1100)]


def test_propensity_is_the_exact_bucket_share_and_arms_follow_it() -> None:
    alloc = allocate([0.1, 0.6, 0.3], 10_000)
    assigner = Assigner("prop", alloc, ("a", "b", "c"), "a")
    batch = assigner.assign_batch(UNITS[:60_000])
    assert set(np.unique(batch.propensity)) == {0.1, 0.6, 0.3}
    assert np.array_equal(batch.propensity, alloc.shares[batch.arm_index])
    observed = np.bincount(batch.arm_index, minlength=3)
    assert stats.chisquare(observed, alloc.shares * observed.sum()).pvalue > 1e-4


def test_units_outside_the_traffic_fraction_get_the_default_arm_flagged() -> None:
    assigner = Assigner("tf", allocate([0.0, 1.0], 10_000), ("control", "treatment"), "control", traffic_fraction=0.1)
    results = [assigner.assign(u) for u in UNITS[:20_000]]
    inside = [r for r in results if r.in_experiment]
    outside = [r for r in results if not r.in_experiment]
    assert abs(len(inside) / len(results) - 0.1) < 0.01
    assert all(r.arm == "treatment" and r.propensity == 1.0 for r in inside)
    assert all(r.arm == "control" and r.propensity == 1.0 and r.arm_index == 0 for r in outside)
    assert all(0 <= r.bucket < 10_000 for r in results)


def test_experiments_in_one_layer_never_share_a_unit() -> None:
    slices = split_layer("homepage", ["exp-a", "exp-b", "exp-c"], 1000)
    assert layer_conflicts(slices) == []
    inside = {}
    for eid, layer in slices.items():
        assigner = Assigner(eid, allocate([0.5, 0.5], 100), ("a", "b"), "a", layer=layer)
        inside[eid] = assigner.assign_batch(UNITS[:30_000]).in_experiment
    total = inside["exp-a"].astype(int) + inside["exp-b"] + inside["exp-c"]
    assert total.max() == 1  # no unit in two experiments
    assert np.all(total == 1)  # the three slices cover the layer
    for share in (inside[e].mean() for e in slices):
        assert abs(share - 1 / 3) < 0.015


def test_overlapping_layer_slices_are_reported() -> None:
    slices = {"x": LayerSlice("L", 0, 600), "y": LayerSlice("L", 500, 1000), "z": LayerSlice("M", 0, 1000)}
    assert layer_conflicts(slices) == [("x", "y")]


def test_reallocation_keeps_returning_units_on_growing_arms() -> None:
    names = ("a", "b", "c")
    old = allocate([0.4, 0.3, 0.3], 10_000)
    new = reallocate(old, quantize_weights([0.2, 0.5, 0.3], 10_000))
    before = Assigner("ret", old, names, "a").assign_batch(UNITS[:50_000]).arm_index
    after = Assigner("ret", new, names, "a").assign_batch(UNITS[:50_000]).arm_index
    # units on b (grew) and c (unchanged) all stay; only units of a move, about half of them
    assert np.all(after[before != 0] == before[before != 0])
    moved = np.mean(after[before == 0] != 0)
    assert abs(moved - 0.5) < 0.02


@pytest.mark.parametrize(
    ("unit", "fragment"),
    [(42, r"unit_id must be a str, but 42 \(int\)"), (b"raw", "unit_id must be a str"), ("bad\ud800", "valid Unicode")],
)
def test_bad_unit_ids_are_rejected_naming_the_value(unit: object, fragment: str) -> None:
    assigner = Assigner("s", allocate([0.5, 0.5], 100), ("a", "b"), "a")
    with pytest.raises(AssignmentError, match=fragment):
        assigner.assign(unit)  # type: ignore[arg-type]
    with pytest.raises(AssignmentError, match=fragment):
        assigner.assign_batch(["fine", unit])  # type: ignore[list-item]


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan"), True])
def test_bad_traffic_fraction_is_rejected(fraction: float) -> None:
    with pytest.raises(AssignmentError, match="traffic_fraction must be in"):
        Assigner("s", allocate([0.5, 0.5], 100), ("a", "b"), "a", traffic_fraction=fraction)


def test_assigner_checks_its_arms() -> None:
    alloc = allocate([0.5, 0.5], 100)
    with pytest.raises(AssignmentError, match="default_arm must be one of"):
        Assigner("s", alloc, ("a", "b"), "z")
    with pytest.raises(AssignmentError, match="allocation has 2"):
        Assigner("s", alloc, ("a", "b", "c"), "a")
    with pytest.raises(AssignmentError, match="single str"):
        Assigner("s", alloc, ("a", "b"), "a").assign_batch("user-1")
