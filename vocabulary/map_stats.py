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


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a flat array, ties sharing their average rank."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(flat, kind="mergesort")
    ranks = np.empty(flat.size)
    ranks[order] = np.arange(1, flat.size + 1)
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps of the same shape (0 when either is constant)."""
    rank_a, rank_b = average_ranks(a), average_ranks(b)
    rank_a -= rank_a.mean()
    rank_b -= rank_b.mean()
    denominator = math.sqrt(float((rank_a**2).sum() * (rank_b**2).sum()))
    return float((rank_a * rank_b).sum() / denominator) if denominator > 0 else 0.0


def top_cell_agreement(cell_map: np.ndarray, reference: np.ndarray) -> bool:
    """Does the map's peak cell coincide with the reference's?"""
    return peak_cell(cell_map) == peak_cell(reference)
