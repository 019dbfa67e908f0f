"""A perturbation reference's evidence set, how a map agrees with it, and intervals for rates.

Occlusion maps are mostly noise: occluding a cell the answer does not depend on moves the score up or
down by chance. So a map is not compared with every cell of the reference (a rank correlation over
all cells mostly ranks noise) nor with its single largest cell (when the evidence spans several
cells, two correct maps pick the same cell only by chance). It is compared with the reference's
**evidence set**: the cells whose drop stands clear of the reference's own noise and near its peak.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binomtest


def noise_floor(reference: np.ndarray) -> float:
    """How far noise moves the reference: the size of its most negative drop (0 when it has none).

    Occluding evidence lowers the score; occluding nothing that matters moves it either way, so the
    negative side of the map shows how large a chance drop can be.
    """
    return float(max(0.0, -np.min(reference))) if reference.size else 0.0


def evidence_set(reference: np.ndarray, *, fraction: float, min_drop: float) -> np.ndarray:
    """Boolean mask of the cells whose drop is at least max(noise floor, `fraction` × the largest
    drop, `min_drop`). Empty when the largest drop does not clear the noise floor or `min_drop`
    (logits): the reference has no evidence to agree with, and the item is not checkable."""
    reference = np.asarray(reference, dtype=np.float64)
    if reference.size == 0:
        return np.zeros(0, dtype=bool)
    threshold = max(noise_floor(reference), fraction * float(reference.max()), min_drop)
    return reference >= threshold


def agreement(cell_map: np.ndarray, evidence: np.ndarray) -> tuple[bool, float]:
    """(the map's peak cell lies in the evidence set, the share of the map's positive mass on it)."""
    cell_map = np.asarray(cell_map, dtype=np.float64)
    positive = np.clip(cell_map, 0, None)
    total = positive.sum()
    mass = float(positive[evidence].sum() / total) if total > 0 else 0.0
    return bool(evidence[int(np.argmax(cell_map))]), mass


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a rate (scipy); (nan, nan) for no trials. Unlike a bootstrap, it is not
    degenerate at 0 or n successes: 0 of 13 gives 0%–23%, not 0%–0%."""
    if trials == 0:
        return math.nan, math.nan
    interval = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="wilson")
    return float(interval.low), float(interval.high)


def is_number(value: object) -> bool:
    """A finite int or float (not a bool, not NaN): a recorded number a verdict can rest on."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
