"""Bringing maps of different token grids onto one common grid, by exact area overlap."""

from __future__ import annotations

import numpy as np


def overlap_matrix(source: int, target: int) -> np.ndarray:
    """[target, source]: the fraction of target cell i covered by source cell j (rows sum to 1)."""
    source_edges = np.arange(source + 1) / source
    target_edges = np.arange(target + 1) / target
    low = np.maximum(target_edges[:-1, None], source_edges[None, :-1])
    high = np.minimum(target_edges[1:, None], source_edges[None, 1:])
    return np.clip(high - low, 0, None) * target


def resample(cell_map: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Area-weighted average of `cell_map` [h, w] on a `grid` (mass shares are preserved)."""
    rows = overlap_matrix(cell_map.shape[0], grid[0])
    cols = overlap_matrix(cell_map.shape[1], grid[1])
    return (rows @ cell_map @ cols.T).astype(np.float32)


def mass_distribution(flat_map: np.ndarray, shape: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """A raw map as a distribution over `grid`: positive part, summing to 1 (zeros when empty)."""
    positive = np.clip(np.asarray(flat_map, dtype=np.float64).reshape(shape), 0, None)
    total = positive.sum()
    on_grid = resample(positive / total if total > 0 else positive, grid)
    return on_grid / on_grid.sum() if on_grid.sum() > 0 else on_grid
