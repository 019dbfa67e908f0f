"""Heatmap overlays: min-max by default, a fixed colour scale when several images share one."""

import numpy as np
from PIL import Image

from explainer.overlay import heatmap_overlay


def test_a_shared_scale_keeps_a_weak_map_faint_where_min_max_would_not():
    image = Image.new("RGB", (32, 32), (0, 0, 0))
    weak = np.zeros((4, 4), dtype=np.float32)
    weak[1, 1] = 0.01
    own_scale = np.asarray(heatmap_overlay(image, weak)).max()
    shared = np.asarray(heatmap_overlay(image, weak, scale=1.0)).max()
    strong = np.asarray(heatmap_overlay(image, weak * 100, scale=1.0)).max()
    assert shared < 0.25 * own_scale and strong == own_scale
    assert np.asarray(heatmap_overlay(image, -weak, scale=1.0)).max() == 0  # nothing above 0: no heat
