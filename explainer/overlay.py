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


# Lookup tables over 8-bit relevance levels: colour, and opacity alpha·sqrt(level) (weak relevance
# stays see-through, so the anatomy shows under the faint parts of the map).
_LEVELS = np.linspace(0.0, 1.0, 256)
_COLOUR_LUTS = [colormap(_LEVELS)[:, channel].tolist() for channel in range(3)]


def _opacity_lut(alpha: float) -> list[int]:
    return np.round(255 * alpha * np.sqrt(_LEVELS)).astype(np.uint8).tolist()


CAPTION_BAND = 16  # pixels of the band under the image that holds a caption


def heatmap_overlay(
    image: Image.Image,
    cell_map: np.ndarray,
    *,
    alpha: float = 0.6,
    caption: str | None = None,
    scale: float | None = None,
) -> Image.Image:
    """The min-max normalised map, upsampled smoothly over the whole image, blended where relevance is high.

    The processor resizes the image plainly to a square, so the token grid covers the whole original
    image: the map is stretched to the original width and height. The map is quantised to 256 levels
    before the bilinear upsampling; colouring and blending are Pillow lookups and a composite.
    `scale` instead divides the map by a fixed value (clipped to [0, 1]): the images of one prompt
    (a volume's slices, a prior and a current) then share one colour scale. A `caption` goes in a
    black band under the image, never over it: the corners are where burned-in markers and tags sit,
    the very evidence an audit looks for. Without one the overlay has the original size.
    """
    base = image.convert("RGB")
    values = cell_map.astype(np.float32)
    if scale is None:
        shown = min_max(values)
    else:  # a fixed scale: relevance at or above it is brightest, 0 and below is transparent
        shown = np.clip(values / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(values)
    levels = np.round(shown * 255).astype(np.uint8)
    scaled = Image.fromarray(levels, mode="L").resize(base.size, Image.BILINEAR)
    heat = Image.merge("RGB", [scaled.point(lut) for lut in _COLOUR_LUTS])
    result = Image.composite(heat, base, scaled.point(_opacity_lut(alpha)))
    if not caption:
        return result
    framed = Image.new("RGB", (result.width, result.height + CAPTION_BAND), (0, 0, 0))
    framed.paste(result, (0, 0))
    ImageDraw.Draw(framed).text((4, result.height + 2), caption, fill=(255, 255, 255))
    return framed
