"""Regions over the token grid and summaries of maps, on toy maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from vocabulary.map_stats import normalised_entropy, peak_cell, pointing_hit, top_fraction_mass
from vocabulary.regions import (
    border_band,
    box_region,
    corners,
    grid3,
    lung_zones,
    mass_shares,
    quadrants,
    rect_weights,
    standard_regions,
)


@pytest.mark.parametrize("grid", [(8, 8), (16, 16), (4, 4), (2, 2)])
def test_partitions_cover_every_cell_exactly_once(grid):
    for regions in (quadrants(grid), grid3(grid)):
        assert np.allclose(sum(regions.values()), 1.0)


def test_thirds_split_cells_fractionally():
    weights = rect_weights((8, 8), 0, 0, 1 / 3, 1)
    assert weights[0, 2] == pytest.approx(8 / 3 - 2)  # cell 2 is two-thirds inside
    assert weights[:, :2].min() == 1.0 and weights[:, 3:].max() == 0.0


def test_lung_zones_are_named_by_the_patients_side():
    grid = (16, 16)
    image_left = np.zeros(grid, dtype=np.float32)
    image_left[6, 2] = 1.0  # image-left, middle height
    shares = mass_shares(image_left, lung_zones(grid))
    assert shares["lung_right_middle"] == pytest.approx(1.0)
    assert shares["lung_left_middle"] == 0.0


def test_border_band_is_the_outer_ring():
    band = border_band((8, 8))["border"]
    assert band.sum() == 8 * 4 - 4 and band[0].all() and band[:, -1].all() and band[3, 3] == 0


def test_corner_blocks_cover_a_sixth_of_each_side():
    weights = corners((12, 12))["corners"]
    assert weights[:2, :2].min() == 1.0 and weights[-2:, -2:].min() == 1.0 and weights[:2, -2:].min() == 1.0
    assert weights.sum() == pytest.approx(4 * 2 * 2) and weights[2:-2].sum() == 0


def test_box_in_original_pixels_maps_through_the_plain_resize():
    # 400×200 image, box over the right half's top half: in a 4×4 grid, rows 0-1, cols 2-3
    weights = box_region((200, 0, 400, 100), (400, 200), (4, 4))
    expected = np.zeros((4, 4))
    expected[:2, 2:] = 1
    assert np.allclose(weights, expected)
    with pytest.raises(ValueError, match="x0 < x1"):
        box_region((300, 0, 100, 50), (400, 200), (4, 4))


def test_mass_shares_use_the_positive_part():
    cell_map = np.array([[3.0, -1.0], [1.0, 0.0]], dtype=np.float32)
    shares = mass_shares(cell_map, quadrants((2, 2)))
    assert shares == pytest.approx(
        {"q_top_left": 0.75, "q_top_right": 0.0, "q_bottom_left": 0.25, "q_bottom_right": 0.0}
    )
    assert set(standard_regions((8, 8))) >= {"border", "corners", "lung_left_lower", "g_r2c2", "q_top_left"}


def test_map_summaries_on_toy_maps():
    one_hot = np.zeros((10, 10), dtype=np.float32)
    one_hot[3, 7] = 2.0
    uniform = np.ones((10, 10), dtype=np.float32)
    assert normalised_entropy(one_hot) == 0.0 and normalised_entropy(uniform) == pytest.approx(1.0)
    assert top_fraction_mass(one_hot) == 1.0 and top_fraction_mass(uniform) == pytest.approx(0.1)
    assert peak_cell(one_hot) == (3, 7)
    assert pointing_hit(one_hot, rect_weights((10, 10), 0.7, 0.3, 0.8, 0.4))
    assert not pointing_hit(one_hot, rect_weights((10, 10), 0.0, 0.0, 0.5, 0.5))
