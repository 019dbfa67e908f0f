"""Bringing maps of different token grids onto one common grid, by exact area overlap."""

from __future__ import annotations

import numpy as np

from vocabulary.regions import cell_means


def resample(cell_map: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Area-weighted average of `cell_map` [h, w] on a `grid` (mass shares are preserved)."""
    return cell_means(cell_means(cell_map, grid[0], axis=0), grid[1], axis=1).astype(np.float32)


def mass_distribution(flat_map: np.ndarray, shape: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """A raw map as a distribution over `grid`: positive part, summing to 1 (zeros when empty)."""
    positive = np.clip(np.asarray(flat_map, dtype=np.float64).reshape(shape), 0, None)
    total = positive.sum()
    on_grid = resample(positive / total if total > 0 else positive, grid)
    return on_grid / on_grid.sum() if on_grid.sum() > 0 else on_grid
