"""Helpers shared by the PNG/JPEG and DICOM decoders: the pixel budget and the stretch to 8 bits."""

from __future__ import annotations

import numpy as np

from storage.errors import ImageTooLarge


def check_pixel_budget(width: int, height: int, name: str, max_pixels: int) -> None:
    """Raise `ImageTooLarge` when the header announces more than ``max_pixels`` pixels."""
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{name}: {width}x{height} = {width * height:,} pixels exceeds max_pixels={max_pixels:,}; "
            "downsample the image or raise max_pixels",
            name=name,
        )


def stretch_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low``..``high`` linearly onto 0..255 (clipped, rounded); all zeros when the range is empty."""
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - low) / (high - low)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def minmax_to_uint8(values: np.ndarray) -> np.ndarray:
    """Stretch the image's own smallest to largest value onto 0..255."""
    return stretch_to_uint8(values, float(values.min()), float(values.max()))
