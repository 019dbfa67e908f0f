"""Heatmap overlays: min-max by default, a fixed colour scale when several images share one, captions
under the image."""

import numpy as np
from PIL import Image

from explainer.overlay import CAPTION_BAND, heatmap_overlay


def test_a_shared_scale_keeps_a_weak_map_faint_where_min_max_would_not():
    image = Image.new("RGB", (32, 32), (0, 0, 0))
    weak = np.zeros((4, 4), dtype=np.float32)
    weak[1, 1] = 0.01
    own_scale = np.asarray(heatmap_overlay(image, weak)).max()
    shared = np.asarray(heatmap_overlay(image, weak, scale=1.0)).max()
    strong = np.asarray(heatmap_overlay(image, weak * 100, scale=1.0)).max()
    assert shared < 0.25 * own_scale and strong == own_scale
    assert np.asarray(heatmap_overlay(image, -weak, scale=1.0)).max() == 0  # nothing above 0: no heat


def test_an_overlay_caption_sits_in_a_band_under_the_image_never_over_it():
    image = Image.new("RGB", (96, 64), (90, 90, 90))
    cell_map = np.zeros((4, 4), dtype=np.float32)
    cell_map[0, 0] = 1.0  # relevance in the top-left corner, where captions used to be drawn
    plain = heatmap_overlay(image, cell_map)
    captioned = heatmap_overlay(image, cell_map, caption="chefer: answer")
    assert plain.size == (96, 64) and captioned.size == (96, 64 + CAPTION_BAND)
    assert np.array_equal(np.asarray(captioned)[:64], np.asarray(plain))  # the image's pixels untouched
    band = np.asarray(captioned)[64:]
    assert band.max() > 200 and band.min() == 0  # light text on the black band
