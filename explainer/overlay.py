"""Heatmaps over the original image, at its original size (PNG through Pillow)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# Anchor colours of a perceptually ordered dark-to-bright map (close to matplotlib's "inferno").
_ANCHORS = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float32,
)


def colormap(values: np.ndarray) -> np.ndarray:
    """RGB uint8 [..., 3] for values in [0, 1]."""
    position = np.clip(values, 0, 1) * (len(_ANCHORS) - 1)
    low = np.floor(position).astype(int).clip(0, len(_ANCHORS) - 2)
    weight = (position - low)[..., None]
    return ((1 - weight) * _ANCHORS[low] + weight * _ANCHORS[low + 1]).astype(np.uint8)


def min_max(cell_map: np.ndarray) -> np.ndarray:
    """Display normalisation: (x - min) / (max - min), zeros for a flat map."""
    low, high = float(cell_map.min()), float(cell_map.max())
    return (cell_map - low) / (high - low) if high > low else np.zeros_like(cell_map)


def heatmap_overlay(
    image: Image.Image, cell_map: np.ndarray, *, alpha: float = 0.6, caption: str | None = None
) -> Image.Image:
    """The min-max normalised map, upsampled smoothly over the whole image, blended where relevance is high.

    The processor resizes the image plainly to a square, so the token grid covers the whole original
    image: the map is stretched to the original width and height.
    """
    base = image.convert("RGB")
    width, height = base.size
    scaled = Image.fromarray(min_max(cell_map.astype(np.float32)), mode="F").resize(
        (width, height), Image.BILINEAR
    )
    values = np.asarray(scaled)
    heat = colormap(values).astype(np.float32)
    weight = (alpha * np.sqrt(np.clip(values, 0, 1)))[..., None]
    blended = (1 - weight) * np.asarray(base, dtype=np.float32) + weight * heat
    result = Image.fromarray(blended.round().astype(np.uint8))
    if caption:
        ImageDraw.Draw(result).text(
            (4, 4), caption, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0)
        )
    return result
