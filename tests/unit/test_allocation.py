"""Bucket allocations: quantization, minimum-churn reallocation, compact ranges."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.core.allocation import (
    Allocation,
    AllocationError,
    allocate,
    churn,
    minimum_churn,
    quantize_weights,
    reallocate,
)

PROPERTY = settings(derandomize=True, max_examples=150, deadline=None)


def weight_vectors(min_arms: int = 1, max_arms: int = 8) -> st.SearchStrategy[list[float]]:
    # Some exact zeros (killed arms), some tiny weights, never all zero.
    value = st.one_of(st.just(0.0), st.floats(1e-6, 1.0), st.floats(0.0, 1e-3))
    return st.lists(value, min_size=min_arms, max_size=max_arms).filter(lambda w: sum(w) > 0)


# --- quantization -------------------------------------------------------------------------


@PROPERTY
@given(weights=weight_vectors(), n=st.sampled_from([1, 2, 7, 100, 10_000, 1_000_003]))
def test_quantized_counts_sum_to_n_and_round_each_share_down_or_up(weights: list[float], n: int) -> None:
    counts = quantize_weights(weights, n)
    exact = np.asarray(weights) / sum(weights) * n
    assert counts.sum() == n
    assert np.all(counts >= np.floor(exact - 1e-9)) and np.all(counts <= np.ceil(exact + 1e-9))
    assert np.all(counts[np.asarray(weights) == 0] == 0)


def test_largest_remainder_gives_leftover_buckets_to_the_largest_fractions() -> None:
    # exact shares 0.7, 1.4, 2.1, 2.8 of 7: floors 0, 1, 2, 2; the 2 left go to 0.8 and 0.7.
    assert quantize_weights([0.1, 0.2, 0.3, 0.4], 7).tolist() == [1, 1, 2, 3]
    # a tie goes to the lower arm index, so publishers agree
    assert quantize_weights([1, 1, 1], 10_000).tolist() == [3334, 3333, 3333]


def test_quantization_respects_bucket_bounds() -> None:
    counts = quantize_weights([0.9, 0.05, 0.05], 100, lower=[0, 10, 10], upper=[80, 100, 100])
    assert counts.tolist() == [80, 10, 10]
    counts = quantize_weights([0.0, 1.0], 100, lower=[5, 0], upper=[100, 100])
    assert counts.tolist() == [5, 95]


@pytest.mark.parametrize(
    ("weights", "fragment"),
    [([], "non-empty"), ([0.5, float("nan")], "finite"), ([0.5, -0.1], ">= 0"), ([0.0, 0.0], "positive sum")],
)
def test_bad_weights_are_rejected_naming_the_value(weights: list[float], fragment: str) -> None:
    with pytest.raises(AllocationError, match=fragment):
        quantize_weights(weights, 100)


def test_impossible_bounds_are_rejected() -> None:
    with pytest.raises(AllocationError, match="bounds cannot hold"):
        quantize_weights([0.5, 0.5], 100, lower=[60, 60])


# --- the Allocation value -------------------------------------------------------------------


def test_shares_are_bucket_counts_over_n_and_lookup_agrees_with_dense_table() -> None:
    alloc = Allocation.from_ranges([[[0, 10], [50, 60]], [[10, 50]], [[60, 100]]], 100)
    assert alloc.counts.tolist() == [20, 40, 40]
    assert alloc.shares.tolist() == [0.2, 0.4, 0.4]
    dense = alloc.dense()
    assert [alloc.arm_of(b) for b in range(100)] == dense.tolist()
    assert dense[0] == 0 and dense[10] == 1 and dense[55] == 0 and dense[99] == 2


def test_from_ranges_merges_touching_ranges_and_round_trips() -> None:
    alloc = Allocation.from_ranges([[[5, 10], [0, 5]], [[10, 20]]], 20)
    assert alloc.ranges == (((0, 10),), ((10, 20),))
    assert Allocation.from_ranges(alloc.to_lists(), 20) == alloc


@pytest.mark.parametrize(
    ("ranges", "fragment"),
    [
        ([[[0, 60]], [[50, 100]]], r"ranges\[1\] range \[50, 100\) overlaps"),
        ([[[0, 40]], [[50, 100]]], r"leaves \[40, 50\) unowned"),
        ([[[0, 40]], [[40, 90]]], r"leave \[90, 100\) unowned"),
        ([[[0, 40]], [[40, 120]]], r"ranges\[1\] has range \[40, 120\)"),
        ([[[0, 40, 50]], [[40, 100]]], "pair"),
    ],
)
def test_invalid_ranges_are_rejected_naming_arm_and_range(ranges: list, fragment: str) -> None:
    with pytest.raises(AllocationError, match=fragment):
        Allocation.from_ranges(ranges, 100)


def test_bucket_lookup_out_of_range_is_an_error() -> None:
    with pytest.raises(AllocationError, match=r"\[0, 100\), but 100"):
        allocate([0.5, 0.5], 100).arm_of(100)


# --- minimum-churn reallocation -------------------------------------------------------------


@st.composite
def reallocation_cases(draw: st.DrawFn) -> tuple[Allocation, np.ndarray]:
    n = draw(st.sampled_from([10, 97, 1000, 10_000]))
    k = draw(st.integers(2, 6))
    alloc = allocate(draw(weight_vectors(k, k)), n)
    # a history of earlier updates, so the previous allocation is already fragmented
    for _ in range(draw(st.integers(0, 4))):
        alloc = reallocate(alloc, quantize_weights(draw(weight_vectors(k, k)), n))
    extra_arms = draw(st.integers(0, 2))
    target = quantize_weights(draw(weight_vectors(k + extra_arms, k + extra_arms)), n)
    return alloc, target


@PROPERTY
@given(case=reallocation_cases())
def test_reallocation_moves_exactly_the_total_variation_distance(case: tuple[Allocation, np.ndarray]) -> None:
    old, target = case
    new = reallocate(old, target)
    assert new.counts.tolist() == target.tolist()
    old_counts = np.pad(old.counts, (0, target.size - old.num_arms))
    tv_buckets = int(np.abs(old_counts - target).sum()) // 2
    assert churn(old.with_arms(target.size), new) == tv_buckets == minimum_churn(old.counts, target)


@PROPERTY
@given(case=reallocation_cases())
def test_returning_units_keep_their_arm_unless_it_shrank(case: tuple[Allocation, np.ndarray]) -> None:
    old, target = case
    new = reallocate(old, target)
    before, after = old.dense(), new.dense()
    old_counts = np.pad(old.counts, (0, target.size - old.num_arms))
    not_shrunk = target >= old_counts
    kept = not_shrunk[before]  # buckets whose arm did not shrink
    assert np.array_equal(after[kept], before[kept])
    # and a shrinking arm keeps all of its remaining buckets where they were
    for arm in np.flatnonzero(~not_shrunk):
        assert np.count_nonzero((before == arm) & (after == arm)) == target[arm]


def test_unchanged_counts_change_nothing() -> None:
    alloc = reallocate(allocate([0.2, 0.3, 0.5], 1000), [100, 400, 500])
    assert reallocate(alloc, alloc.counts) == alloc


def test_fragmentation_stays_modest_over_many_updates() -> None:
    # A bandit updates often by small steps; the ranges must not splinter as it does.
    rng = np.random.default_rng(7)
    k, n = 4, 10_000
    alloc = allocate(np.full(k, 1 / k), n)
    worst = 0
    for _ in range(400):
        w = np.clip(alloc.shares + rng.normal(0, 0.02, k), 0.001, None)
        alloc = reallocate(alloc, quantize_weights(w, n))
        worst = max(worst, alloc.num_ranges)
    assert worst <= 8 * k


def test_a_two_arm_allocation_only_moves_the_boundary() -> None:
    alloc = allocate([0.5, 0.5], 10_000)
    for w in ([0.6, 0.4], [0.3, 0.7], [0.55, 0.45]):
        alloc = reallocate(alloc, quantize_weights(w, 10_000))
        assert alloc.num_ranges == 2


def test_reallocate_rejects_wrong_totals_and_removed_arms() -> None:
    alloc = allocate([0.5, 0.5], 100)
    with pytest.raises(AllocationError, match="sum to num_buckets"):
        reallocate(alloc, [50, 49])
    with pytest.raises(AllocationError, match="at least 2 arms"):
        reallocate(alloc, [100])


def test_weight_table_arms_round_trip_and_are_checked() -> None:
    alloc = reallocate(allocate([0.5, 0.3, 0.2], 100), [20, 30, 50])
    records = alloc.to_arm_weights(["a", "b", "c"])
    assert [r["weight"] for r in records] == [0.2, 0.3, 0.5]
    assert sum(r["buckets"] for r in records) == 100
    assert Allocation.from_arm_weights(records, 100) == (("a", "b", "c"), alloc)
    records[0]["weight"] = 0.25
    with pytest.raises(AllocationError, match="arm 'a' claims 20 buckets and weight 0.25"):
        Allocation.from_arm_weights(records, 100)
