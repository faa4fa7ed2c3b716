"""Corrections for testing several treatments at once: Holm (family-wise error) and
Benjamini–Hochberg (false discovery rate), as adjusted p-values.

A hypothesis is rejected at level α when its adjusted p-value is <= α. Adjusted p-values
are what a report shows, so the reader can apply any α.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sluice.core.stats.checks import StatsInputError, as_array


def _p_values(p_values: ArrayLike) -> NDArray[np.float64]:
    p = as_array("p_values", p_values, ndim=1)
    if np.any((p < 0) | (p > 1)):
        raise StatsInputError(f"p_values must be in [0, 1], but {p} is given")
    return p


def holm_adjust(p_values: ArrayLike) -> NDArray[np.float64]:
    """Holm's step-down adjusted p-values, shape (m,) in the input order.

    Controls the family-wise error rate (any false rejection) at α under any dependence;
    uniformly more powerful than Bonferroni.
    """
    p = _p_values(p_values)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    stepped = (m - np.arange(m)) * p[order]
    adjusted = np.minimum(np.maximum.accumulate(stepped), 1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


def benjamini_hochberg_adjust(p_values: ArrayLike) -> NDArray[np.float64]:
    """Benjamini–Hochberg step-up adjusted p-values (q-values), shape (m,) in input order.

    Controls the false discovery rate at α for independent or positively dependent tests
    (comparisons against one shared control are positively dependent).
    """
    p = _p_values(p_values)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out
