"""Figures of the audit report, drawn with numpy and Pillow (heatmaps) or as inline SVG (bar charts).

Figures of one family share one scale, so panels can be compared: every region bar chart ends at the
same axis value (`axis_limit` over all of them), and the cohort heatmaps of one target class colour the
same share of relevance per cell alike (`heatmap(..., vmax=...)`, stated by a colour bar). Statistics
always come from the mass shares in the tables.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

import numpy as np
from PIL import Image, ImageOps

HEATMAP_SIZE = 384  # longest side of a cohort heatmap, pixels
THUMBNAIL_SIZE = 512  # longest side of a gallery image, pixels
# dark → red → yellow: readable on screens and in grayscale print
_BLACK, _MID, _WHITE = (0, 0, 4), (212, 72, 66), (252, 255, 164)


def png_bytes(image: Image.Image) -> bytes:
    """The image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@dataclass
class ImageSink:
    """The report's image files, collected while the sections are built and written at the end."""

    files: dict[str, bytes] = field(default_factory=dict)

    def add(self, name: str, image: Image.Image) -> str:
        """Store `image` as img/<name>.png; return the src relative to index.html."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        self.files[f"{safe}.png"] = png_bytes(image)
        return f"img/{safe}.png"


def thumbnail(image: Image.Image, size: int = THUMBNAIL_SIZE) -> Image.Image:
    """A copy no larger than `size` on its longest side (aspect kept), in RGB."""
    copy = image.convert("RGB")
    copy.thumbnail((size, size), Image.Resampling.LANCZOS)
    return copy


def min_max(cell_map: np.ndarray) -> np.ndarray:
    """Display normalisation: (x − min) / (max − min); zeros for a flat map."""
    values = np.nan_to_num(np.asarray(cell_map, dtype=np.float32))
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


NEUTRAL_GREY = 128  # the background when no image can be shown: says nothing about any patient


def mean_image(images: Sequence[Image.Image], size: int = HEATMAP_SIZE) -> Image.Image:
    """The pixel-wise mean of the images in grayscale, each resized plainly to size × size (as the
    processor resizes them to its square): a cohort's average anatomy, no one patient's image.

    >>> mean_image([Image.new("L", (10, 20), 0), Image.new("L", (30, 30), 200)], size=8).getpixel((0, 0))
    100
    """
    total = np.zeros((size, size), dtype=np.float64)
    for image in images:
        gray = ImageOps.grayscale(image).resize((size, size), Image.Resampling.BILINEAR)
        total += np.asarray(gray, dtype=np.float64)
    return Image.fromarray((total / max(len(images), 1)).round().astype(np.uint8), mode="L")


def heatmap(
    cell_map: np.ndarray,
    background: Image.Image | None,
    *,
    size: int = HEATMAP_SIZE,
    vmax: float | None = None,
) -> Image.Image:
    """The map [grid_h, grid_w] stretched over `background` (neutral grey without one).

    Colours run from 0 to `vmax` (a scale shared by the maps of one figure family; values above it
    saturate), or min–max within this map when `vmax` is None. The token grid covers the whole image
    (the processor resizes it plainly to a square), so the map is stretched to the background's width
    and height. Where relevance is high the colour covers the image; where it is low the grayscale
    image shows through.

    >>> heatmap(np.eye(16), None).size
    (384, 384)
    """
    if background is not None:
        base = ImageOps.grayscale(thumbnail(background, size)).convert("RGB")
    else:
        base = Image.new("RGB", (size, size), (NEUTRAL_GREY,) * 3)
    width, height = base.size
    values = np.nan_to_num(np.asarray(cell_map, dtype=np.float32))
    if vmax is None:
        shown = min_max(values)
    else:
        shown = np.clip(values / vmax, 0.0, 1.0) if vmax > 0 else np.zeros_like(values)
    scaled = Image.fromarray(shown.astype(np.float32), mode="F").resize(
        (width, height), Image.Resampling.BILINEAR
    )
    values = np.clip(np.asarray(scaled), 0.0, 1.0)
    gray = Image.fromarray((values * 255).round().astype(np.uint8), mode="L")
    colour = ImageOps.colorize(gray, black=_BLACK, white=_WHITE, mid=_MID)
    # opacity grows with relevance: the anatomy stays visible under the weak parts of the map
    alpha = Image.fromarray((255 * 0.75 * np.sqrt(values)).round().astype(np.uint8), mode="L")
    return Image.composite(colour, base, alpha)


def colour_scale(width: int = 200, height: int = 12) -> Image.Image:
    """The heatmap's colour scale, low (left) to high (right)."""
    ramp = np.tile(np.linspace(0, 255, width, dtype=np.float32), (height, 1)).round().astype(np.uint8)
    return ImageOps.colorize(Image.fromarray(ramp, mode="L"), black=_BLACK, white=_WHITE, mid=_MID)


@dataclass(frozen=True)
class Bar:
    """One bar: a region's mean share with its 95% CI, and the whole run's mean for comparison."""

    label: str
    mean: float
    ci_low: float
    ci_high: float
    baseline: float | None = None


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def axis_limit(bars: Sequence[Bar]) -> float:
    """The next 10% above the largest mean, upper CI bound or baseline (at least 10%, at most 100%)."""
    highest = max([_finite(v) or 0.0 for bar in bars for v in (bar.mean, bar.ci_high, bar.baseline)] + [0.1])
    return min(1.0, math.ceil(highest * 10 - 1e-9) / 10)


def region_bars_svg(
    bars: Sequence[Bar], *, title: str, width: int = 460, axis_max: float | None = None
) -> str:
    """A horizontal bar chart (inline SVG): mean share per region, 95% CI whiskers, baseline ticks.

    The axis runs from 0 to `axis_max`: pass one limit for every chart of a family (`axis_limit` over
    all their bars) so they compare; by default the chart's own `axis_limit`. Its end is labelled.
    """
    label_width, row, top = 190, 20, 8
    plot = width - label_width - 50
    axis_max = axis_limit(bars) if axis_max is None else axis_max

    def x(value: float) -> float:
        return label_width + plot * min(max(value, 0.0), axis_max) / axis_max

    height = top + row * len(bars) + 24
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="bars" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for index, bar in enumerate(bars):
        y = top + index * row
        mean = _finite(bar.mean)
        parts.append(
            f'<text x="{label_width - 6}" y="{y + 13}" text-anchor="end" class="label">{escape(bar.label)}</text>'
        )
        if mean is None:
            parts.append(f'<text x="{label_width + 4}" y="{y + 13}" class="value">no data</text>')
            continue
        parts.append(
            f'<rect x="{label_width}" y="{y + 3}" width="{x(mean) - label_width:.1f}" height="12" class="bar"/>'
        )
        low, high = _finite(bar.ci_low), _finite(bar.ci_high)
        if low is not None and high is not None:
            parts.append(
                f'<path d="M{x(low):.1f},{y + 9}H{x(high):.1f}M{x(low):.1f},{y + 5}V{y + 13}'
                f'M{x(high):.1f},{y + 5}V{y + 13}" class="ci"/>'
            )
        baseline = _finite(bar.baseline)
        if baseline is not None:
            parts.append(
                f'<path d="M{x(baseline):.1f},{y + 1}V{y + 17}" class="baseline"><title>whole run: '
                f"{baseline:.1%}</title></path>"
            )
        parts.append(
            f'<text x="{max(x(mean), x(high) if high is not None else 0) + 4:.1f}" y="{y + 13}" '
            f'class="value">{mean:.0%}</text>'
        )
    axis_y = top + row * len(bars) + 4
    parts += [
        f'<path d="M{label_width},{axis_y}H{label_width + plot}" class="axis"/>',
        f'<text x="{label_width}" y="{axis_y + 14}" class="tick">0%</text>',
        f'<text x="{label_width + plot}" y="{axis_y + 14}" text-anchor="end" class="tick">{axis_max:.0%}</text>',
        "</svg>",
    ]
    return "\n".join(parts)
