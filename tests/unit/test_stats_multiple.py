"""Holm and Benjamini–Hochberg adjusted p-values against statsmodels `multipletests`."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.multitest import multipletests

from sluice.core.stats.checks import StatsInputError
from sluice.core.stats.multiple import benjamini_hochberg_adjust, holm_adjust

# Mix in round values so ties and values exactly at α get exercised.
p_lists = st.lists(
    st.one_of(st.floats(0.0, 1.0, allow_nan=False), st.sampled_from([0.0, 0.01, 0.0125, 0.025, 0.05, 1.0])),
    min_size=1,
    max_size=12,
)


# Few examples: statsmodels' Holm runs a full garbage collection on every call.
@settings(derandomize=True, max_examples=40, deadline=None)
@given(p_lists)
def test_holm_matches_statsmodels(p: list[float]) -> None:
    reject, adjusted, _, _ = multipletests(p, alpha=0.05, method="holm")
    ours = holm_adjust(p)
    np.testing.assert_allclose(ours, adjusted, rtol=1e-12, atol=1e-15)
    decided = np.abs(ours - 0.05) > 1e-12  # at exactly α the two roundings may differ
    np.testing.assert_array_equal((ours <= 0.05)[decided], reject[decided])


@settings(derandomize=True, max_examples=60, deadline=None)
@given(p_lists)
def test_benjamini_hochberg_matches_statsmodels(p: list[float]) -> None:
    reject, adjusted, _, _ = multipletests(p, alpha=0.05, method="fdr_bh")
    ours = benjamini_hochberg_adjust(p)
    np.testing.assert_allclose(ours, adjusted, rtol=1e-12, atol=1e-15)
    decided = np.abs(ours - 0.05) > 1e-12  # at exactly α the two roundings may differ
    np.testing.assert_array_equal((ours <= 0.05)[decided], reject[decided])


def test_known_values() -> None:
    p = [0.01, 0.04, 0.03, 0.20]
    np.testing.assert_allclose(holm_adjust(p), [0.04, 0.09, 0.09, 0.20])
    np.testing.assert_allclose(benjamini_hochberg_adjust(p), [0.04, 0.0533333333, 0.0533333333, 0.20])


def test_p_values_outside_zero_one_are_refused() -> None:
    with pytest.raises(StatsInputError, match=r"p_values must be in \[0, 1\]"):
        holm_adjust([0.2, 1.5])
