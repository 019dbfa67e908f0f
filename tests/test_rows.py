"""The comparison of rows across code paths (`tests/rows.py`): float rounding passes, anything more fails."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.rows import assert_same_rows


def _tokens(share: float, peak: tuple[int, int], cells: list[float], label: str = "a") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "target_text": [label],
            "region_shares": [[("border", share), ("corners", 0.5)]],  # a Parquet map as pandas reads it
            "image_relevance": [cells],
            "grid_w": [2],
            "peak_row": [peak[0]],
            "peak_col": [peak[1]],
            "roi_hit": [peak == (0, 0)],
        }
    )


def test_float_rounding_inside_structures_and_tied_peaks_pass():
    want = _tokens(0.004410799592733383, (0, 0), [0.3, 0.3, 0.1, 0.0])
    assert_same_rows(_tokens(0.0044108000583946705, (0, 1), [0.3, 0.3000001, 0.1, 0.0]), want, "tokens")


@pytest.mark.parametrize(
    "got",
    [
        _tokens(0.0045, (0, 0), [0.3, 0.3, 0.1, 0.0]),  # a share off by 2%
        _tokens(0.0044108, (1, 0), [0.3, 0.3, 0.1, 0.0]),  # a peak on a cell that does not tie
        _tokens(0.0044108, (0, 0), [0.3, 0.3, 0.1, 0.0], label="b"),  # a text
        _tokens(0.0044108, (0, 0), [0.3, 0.3, 0.1]),  # a map of another length
    ],
)
def test_anything_beyond_rounding_fails(got):
    with pytest.raises(AssertionError):
        assert_same_rows(got, _tokens(0.004410799592733383, (0, 0), [0.3, 0.3, 0.1, 0.0]), "tokens")
