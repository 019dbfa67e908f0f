"""Named regions over an image's token grid, and relevance mass shares in them.

A region is a weight per grid cell: the fraction of the cell's area inside the region, so region
edges need not fall on cell edges (thirds of a 16×16 grid) and a partition's shares sum to 1.
Coordinates are fractions of the image, which the processor resizes plainly (aspect not kept), so
a box in original pixels maps onto the grid by dividing by the original width and height.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from vocabulary.names import BORDER, CORNERS, LUNG_ZONES, QUADRANTS, grid3_cell

Grid = tuple[int, int]


def cell_overlap(lo: float | np.ndarray, hi: float | np.ndarray, n_cells: int) -> np.ndarray:
    """[..., n_cells]: the fraction of each of `n_cells` equal cells over [0, 1] that the interval
    [lo, hi) covers (fractions of the image; arrays of intervals give one row each).

    >>> cell_overlap(0.0, 0.5, 4)  # the first half of a 4-cell axis
    array([1., 1., 0., 0.])
    """
    edges = np.arange(n_cells + 1) / n_cells
    lo, hi = np.asarray(lo, dtype=np.float64)[..., None], np.asarray(hi, dtype=np.float64)[..., None]
    return np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None) * n_cells


def cell_means(values: np.ndarray, n_cells: int, axis: int) -> np.ndarray:
    """Means of `values` over `n_cells` equal cells along `axis`, a cell edge that cuts through a pixel
    counting that pixel by the covered fraction (exact area overlap), in memory for `values` and the
    result: no [n_cells, n] overlap matrix is built, so a 40,000,000-pixel axis costs what its values do.

    Edge j lies `j * n / n_cells` pixels in: pixel `starts[j]` and a fraction `fractions[j]` of the next.
    """
    values = np.moveaxis(values, axis, -1)  # [..., n]
    n = values.shape[-1]
    edges = np.arange(n_cells + 1)
    starts, fractions = edges * n // n_cells, (edges * n % n_cells) / n_cells  # [n_cells + 1]
    # sums of the whole pixels between consecutive edges, one slice at a time: sum() casts in small
    # buffers, where np.add.reduceat with a dtype would first copy all of `values` as float64
    segments = np.stack(
        [values[..., start:end].sum(axis=-1, dtype=np.float64) for start, end in pairwise(starts)],
        axis=-1,
    )  # [..., n_cells]
    before_edges = np.concatenate(
        [np.zeros((*segments.shape[:-1], 1)), np.cumsum(segments, axis=-1)], axis=-1
    )
    cut_pixels = np.take(values, np.minimum(starts, n - 1), axis=-1)  # the last edge has fraction 0
    up_to_edges = before_edges + fractions * cut_pixels  # [..., n_cells + 1] integral from 0 to each edge
    return np.moveaxis(np.diff(up_to_edges, axis=-1) * (n_cells / n), -1, axis)


def rect_weights(grid: Grid, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """[rows, cols] fraction of each cell covered by the rectangle (image fractions, 0..1)."""
    rows, cols = grid
    return np.outer(cell_overlap(y0, y1, rows), cell_overlap(x0, x1, cols)).astype(np.float32)


def quadrants(grid: Grid) -> dict[str, np.ndarray]:
    """The image's quarters, top row first (`QUADRANTS` order)."""
    corners = ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5))  # (x0, y0) of each quarter
    return {
        name: rect_weights(grid, x, y, x + 0.5, y + 0.5)
        for name, (x, y) in zip(QUADRANTS, corners, strict=True)
    }


def grid3(grid: Grid) -> dict[str, np.ndarray]:
    return {
        grid3_cell(row, col): rect_weights(grid, col / 3, row / 3, (col + 1) / 3, (row + 1) / 3)
        for row in range(3)
        for col in range(3)
    }


@dataclass(frozen=True)
class LungFieldLayout:
    """Where the lung fields sit on a PA chest radiograph, as image fractions.

    PA view: the patient faces the detector, so the image's left half shows the patient's RIGHT lung.
    """

    top: float = 0.12
    bottom: float = 0.88
    right_lung: tuple[float, float] = (0.08, 0.47)  # image-left
    left_lung: tuple[float, float] = (0.53, 0.92)  # image-right


def lung_zones(grid: Grid, layout: LungFieldLayout = LungFieldLayout()) -> dict[str, np.ndarray]:
    """Upper/middle/lower zone of each lung, named by the PATIENT's side."""
    height = (layout.bottom - layout.top) / 3
    boxes = [  # LUNG_ZONES order: the right lung's zones top down, then the left's
        (x0, layout.top + level * height, x1, layout.top + (level + 1) * height)
        for x0, x1 in (layout.right_lung, layout.left_lung)
        for level in range(3)
    ]
    return {name: rect_weights(grid, *box) for name, box in zip(LUNG_ZONES, boxes, strict=True)}


def border_band(grid: Grid) -> dict[str, np.ndarray]:
    """The outermost ring of cells, where burned-in text and laterality markers live."""
    band = np.ones(grid, dtype=np.float32)
    band[1:-1, 1:-1] = 0.0
    return {BORDER: band}


def corners(grid: Grid, size: float = 1 / 6) -> dict[str, np.ndarray]:
    """The four corner blocks (`size` of the width and height each): laterality markers, burned-in tags."""
    far = 1.0 - size
    blocks = [rect_weights(grid, x, y, x + size, y + size) for x in (0.0, far) for y in (0.0, far)]
    return {CORNERS: np.clip(sum(blocks), 0.0, 1.0)}


def standard_regions(grid: Grid) -> dict[str, np.ndarray]:
    """Quadrants, 3×3 grid, lung zones (patient sides), the border band and the corner blocks."""
    return {**quadrants(grid), **grid3(grid), **lung_zones(grid), **border_band(grid), **corners(grid)}


def box_region(box: tuple[float, float, float, float], image_size: tuple[int, int], grid: Grid) -> np.ndarray:
    """Cell weights of a box (x0, y0, x1, y1) in original-image pixels; `image_size` is (width, height)."""
    width, height = image_size
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"box {box} must satisfy 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}")
    return rect_weights(grid, x0 / width, y0 / height, x1 / width, y1 / height)


def mass_share(cell_map: np.ndarray, weights: np.ndarray) -> float:
    """Share of the map's positive relevance inside the region (0 when the map has none)."""
    positive = np.clip(cell_map, 0, None)
    total = float(positive.sum())
    return float((positive * weights).sum() / total) if total > 0 else 0.0


def mass_shares(cell_map: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: mass_share(cell_map, weights) for name, weights in regions.items()}
