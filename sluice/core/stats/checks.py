"""Input checks shared by the statistics modules: one error type, `StatsInputError`, and
helpers whose messages name the field, the value given and what was expected."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sluice.core.errors import CoreInputError


class StatsInputError(CoreInputError):
    """Statistics were asked for with inputs that cannot describe real data."""


def _show(value: Any) -> str:
    text = np.array2string(np.asarray(value), threshold=8) if np.ndim(value) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def as_array(name: str, value: ArrayLike, *, ndim: int | None = None, min_len: int = 0) -> NDArray[np.float64]:
    """`value` as a float array of finite numbers; `ndim`/`min_len` constrain its shape."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise StatsInputError(f"{name} must be numbers, but {_show(value)} is given") from None
    if ndim is not None and arr.ndim != ndim:
        what = "a number" if ndim == 0 else f"a {ndim}-d array of numbers"
        raise StatsInputError(f"{name} must be {what}, but {_show(value)} is given")
    if arr.ndim and arr.shape[-1] < min_len:
        raise StatsInputError(f"{name} must have at least {min_len} entries, but {_show(value)} is given")
    if not np.all(np.isfinite(arr)):
        raise StatsInputError(f"{name} must be finite, but {_show(value)} is given")
    return arr


def as_nonnegative(name: str, value: ArrayLike, **shape: Any) -> NDArray[np.float64]:
    """Like `as_array`, and every entry must be >= 0 (counts, variances, sample sizes)."""
    arr = as_array(name, value, **shape)
    if np.any(arr < 0):
        raise StatsInputError(f"{name} must be >= 0, but {_show(value)} is given")
    return arr


def check_probability(name: str, value: float, *, open_low: bool = True, open_high: bool = True) -> float:
    """A probability strictly inside (0, 1) unless an end is allowed."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise StatsInputError(f"{name} must be a number in (0, 1), but {value!r} is given") from None
    low_ok = x > 0 if open_low else x >= 0
    high_ok = x < 1 if open_high else x <= 1
    if not (np.isfinite(x) and low_ok and high_ok):
        lo, hi = "(" if open_low else "[", ")" if open_high else "]"
        raise StatsInputError(f"{name} must be in {lo}0, 1{hi}, but {value!r} is given")
    return x


def same_shape(**arrays: NDArray[np.float64]) -> None:
    """All named arrays share one shape; the message names them and their shapes."""
    shapes = {k: np.shape(v) for k, v in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise StatsInputError(f"{', '.join(shapes)} must have the same shape, but got {listed}")


def scalar_or_array(x: NDArray[np.float64]) -> float | NDArray[np.float64]:
    """A 0-d result as a plain float, anything else unchanged."""
    return float(x) if np.ndim(x) == 0 else x
