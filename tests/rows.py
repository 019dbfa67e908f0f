"""Comparing output rows produced by two code paths (batch sizes, attention paths, Dask against
in-process): equal, except that every float, wherever it sits (a column, a dict of region shares, a
list, a struct), is compared to float rounding, and a map's peak may sit on any cell that ties with
the other path's peak to that rounding.

Float32 kernels of another batch shape or another CPU round differently (0.0044108 against
0.00441080006 in a region share), so exact comparison of float structures fails on some machines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

RTOL, ATOL = 1e-4, 1e-5
# columns that follow from the map's argmax: equal when the peaks are equal, free where they tie
PEAK_COLUMNS = ("peak_row", "peak_col", "roi_hit")


def assert_close_values(got: Any, want: Any, where: str, rtol: float = RTOL, atol: float = ATOL) -> None:
    """`got` equals `want`, floats inside dicts, lists, tuples and arrays to `rtol`/`atol`."""
    if isinstance(want, Mapping):
        assert isinstance(got, Mapping) and set(got) == set(want), f"{where}: keys {got!r} != {want!r}"
        for key in want:
            assert_close_values(got[key], want[key], f"{where}[{key!r}]", rtol, atol)
    elif _is_missing(want) or _is_missing(got):
        assert _is_missing(want) and _is_missing(got), f"{where}: {got!r} != {want!r}"
    elif isinstance(want, float | np.floating) or _float_array(want):
        np.testing.assert_allclose(
            np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64), rtol, atol, err_msg=where
        )
    elif isinstance(want, list | tuple | np.ndarray):
        got_items, want_items = list(got), list(want)
        assert len(got_items) == len(want_items), f"{where}: length {len(got_items)} != {len(want_items)}"
        for index, (a, b) in enumerate(zip(got_items, want_items, strict=True)):
            assert_close_values(a, b, f"{where}[{index}]", rtol, atol)
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame, what: str) -> None:
    """Equal tables, row by row in their order, to float rounding (see the module docstring)."""
    assert list(got.columns) == list(want.columns) and len(got) == len(want), what
    tied_peaks = _tied_peaks(got, want, what) if "image_relevance" in want.columns else set()
    for column in want.columns:
        for row, (a, b) in enumerate(zip(got[column], want[column], strict=True)):
            if column in PEAK_COLUMNS and row in tied_peaks:
                continue
            assert_close_values(a, b, f"{what}: row {row}: {column}")


def _tied_peaks(got: pd.DataFrame, want: pd.DataFrame, what: str) -> set[int]:
    """Rows whose peaks differ between the paths on cells whose values tie to float rounding (the
    peak columns of those rows are then not compared); a peak that differs beyond that fails."""
    tied = set()
    for row, (got_peak, want_peak, cells, width) in enumerate(
        zip(
            zip(got["peak_row"], got["peak_col"], strict=True),
            zip(want["peak_row"], want["peak_col"], strict=True),
            want["image_relevance"],
            want["grid_w"],
            strict=True,
        )
    ):
        if _is_missing(cells) or tuple(got_peak) == tuple(want_peak):
            continue
        cells = np.asarray(cells, dtype=np.float64)
        at_got = cells[int(got_peak[0]) * int(width) + int(got_peak[1])]
        assert math.isclose(at_got, cells.max(), rel_tol=RTOL, abs_tol=ATOL), (
            f"{what}: row {row}: peak {got_peak} != {want_peak} and not a tie ({at_got} < {cells.max()})"
        )
        tied.add(row)
    return tied


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def _float_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind == "f"
