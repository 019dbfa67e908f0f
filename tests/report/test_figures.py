"""Report figures: the heatmap is bright where the map is high, the bar chart draws means and CIs."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from auditing.report.figures import Bar, heatmap, min_max, region_bars_svg


def brightness(image: Image.Image, box: tuple[int, int, int, int]) -> float:
    return float(np.asarray(image.crop(box).convert("L"), dtype=np.float32).mean())


def test_heatmap_is_bright_where_the_map_is_high_and_stretches_over_the_image():
    cell_map = np.zeros((16, 16), dtype=np.float32)
    cell_map[:4, :4] = 1.0  # top-left
    background = Image.new("L", (300, 200), 128)
    picture = heatmap(cell_map, background, size=150)
    assert picture.size == (150, 100) and picture.mode == "RGB"  # aspect of the image kept
    assert brightness(picture, (0, 0, 30, 20)) > brightness(picture, (110, 70, 150, 100)) + 60
    alone = heatmap(cell_map * 1e-9, None, size=64)  # min-max: the scale of the map does not matter
    assert alone.size == (64, 64) and brightness(alone, (0, 0, 12, 12)) > 200 > brightness(
        alone, (40, 40, 64, 64)
    )


def test_flat_and_nan_maps_are_drawn_without_colour():
    assert not min_max(np.full((4, 4), 3.0)).any()
    assert np.isfinite(min_max(np.array([[np.nan, 1.0], [0.0, 2.0]]))).all()
    assert heatmap(np.ones((4, 4)), None, size=32).getextrema() == ((0, 0), (0, 0), (4, 4))


def test_region_bars_have_a_bar_whiskers_and_baseline_per_region():
    svg = region_bars_svg(
        [
            Bar("Image border band", 0.8, 0.7, 0.9, 0.3),
            Bar("Left lung", 0.1, 0.05, 0.15),
            Bar("None", float("nan"), 0, 0),
        ],
        title="border <test>",
    )
    assert (
        svg.count('class="bar"') == 2 and svg.count('class="ci"') == 2 and svg.count('class="baseline"') == 1
    )
    assert "80%" in svg and "no data" in svg and "border &lt;test&gt;" in svg
    assert re.search(r">90%</text>", svg)  # axis ends at the next 10% above the largest upper bound
