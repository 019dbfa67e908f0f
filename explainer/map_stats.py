"""Summaries of one relevance map: concentration, peak, pointing game."""

from __future__ import annotations

import math

import numpy as np


def normalised_entropy(cell_map: np.ndarray) -> float:
    """Entropy of the positive map as a distribution, divided by log(cells): 1 = uniform, 0 = one cell."""
    positive = np.clip(cell_map, 0, None).ravel()
    total = positive.sum()
    if total <= 0 or positive.size < 2:
        return 0.0
    p = positive[positive > 0] / total
    return float(-(p * np.log(p)).sum() / math.log(positive.size))


def top_fraction_mass(cell_map: np.ndarray, fraction: float = 0.1) -> float:
    """Share of the positive mass in the top `fraction` of cells (at least one cell)."""
    positive = np.sort(np.clip(cell_map, 0, None).ravel())[::-1]
    total = positive.sum()
    if total <= 0:
        return 0.0
    return float(positive[: max(1, math.ceil(fraction * positive.size))].sum() / total)


def peak_cell(cell_map: np.ndarray) -> tuple[int, int]:
    """(row, col) of the largest value."""
    row, col = np.unravel_index(int(np.argmax(cell_map)), cell_map.shape)
    return int(row), int(col)


def pointing_hit(cell_map: np.ndarray, weights: np.ndarray) -> bool:
    """Pointing game: does the peak cell overlap the region?"""
    return bool(weights[peak_cell(cell_map)] > 0)
