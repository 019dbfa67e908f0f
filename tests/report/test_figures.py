"""Report figures: the heatmap is bright where the map is high, the bar chart draws means and CIs."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from auditing.report.figures import Bar, axis_limit, heatmap, mean_image, min_max, region_bars_svg


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


def test_flat_and_nan_maps_are_drawn_without_colour_over_neutral_grey():
    assert not min_max(np.full((4, 4), 3.0)).any()
    assert np.isfinite(min_max(np.array([[np.nan, 1.0], [0.0, 2.0]]))).all()
    assert (
        heatmap(np.ones((4, 4)), None, size=32).getextrema() == ((128, 128),) * 3
    )  # the grey background only


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


def test_a_shared_colour_scale_keeps_a_weaker_map_dimmer():
    strong, weak = np.zeros((8, 8), dtype=np.float32), np.zeros((8, 8), dtype=np.float32)
    strong[:2, :2], weak[:2, :2] = 0.2, 0.05  # shares of relevance per cell
    corner = (0, 0, 16, 16)
    shared = [brightness(heatmap(m, None, size=64, vmax=0.2), corner) for m in (strong, weak)]
    own = [brightness(heatmap(m, None, size=64), corner) for m in (strong, weak)]
    assert shared[0] > shared[1] + 30 and own[0] == own[1]  # min–max would draw them alike


def test_one_axis_limit_for_a_family_of_bar_charts():
    lungs, border = [Bar("Left lung", 0.3, 0.25, 0.36)], [Bar("Image border band", 0.8, 0.7, 0.9)]
    limit = axis_limit(lungs + border)
    assert axis_limit(lungs) == 0.4 and limit == 0.9
    assert re.search(r">90%</text>", region_bars_svg(lungs, title="lungs", axis_max=limit))


def test_mean_image_averages_grayscale_images_resized_to_one_square():
    images = [Image.new("RGB", (40, 20), (0, 0, 0)), Image.new("L", (10, 30), 100)]
    mean = mean_image(images, size=16)
    assert mean.size == (16, 16) and mean.mode == "L" and mean.getextrema() == (50, 50)
