"""What DICOM series and NIfTI volumes share once their slices are ordered: sampling and windowing.

CT slices in Hounsfield units become RGB through three windows, as in MedGemma 1.5's CT recipe:
R -1024..1024 (wide), G -135..215 (soft tissue), B 0..80 (brain), each mapped linearly onto 0..255 and
clipped. Other volumes get one grey window for the whole volume: a DICOM series' own display window
(a LINEAR WindowCenter/WindowWidth that every sampled slice shares, as a viewer opens the series), else
the 0.5th to 99.5th percentile of the sampled slices' values, so slices keep their brightness relative
to each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from storage._pixels import stretch_to_uint8

CT_WINDOWS = ((-1024.0, 1024.0), (-135.0, 215.0), (0.0, 80.0))  # R, G, B in Hounsfield units
PERCENTILES = (0.5, 99.5)
_PLANE_TOLERANCE_DEGREES = 30.0  # a normal within this of a patient axis names the plane


@dataclass(frozen=True)
class SampledVolume:
    """The sampled slices of an ordered volume, in modality units, and what is known about them."""

    n_slices: int  # slices in the whole ordered volume
    indices: list[int]  # 0-based positions of the sampled slices in the ordered volume
    slices: list[np.ndarray]  # one [rows, columns] float32 array per sampled slice, finite
    hounsfield: bool  # CT in Hounsfield units: shown through CT_WINDOWS
    inverted: bool = False  # MONOCHROME1: low values bright (grey window only)
    display_window: tuple[float, float] | None = None  # (low, high) the series states; None: percentiles
    info: dict[str, Any] = field(default_factory=dict)  # the same for every slice
    slice_info: list[dict[str, Any]] = field(default_factory=list)  # one per sampled slice (or empty)


def sample_indices(n_slices: int, count: int) -> list[int]:
    """``count`` indices spread uniformly over 0..n_slices-1 (linspace, rounded, unique); all if fewer.

    >>> sample_indices(40, 8)
    [0, 6, 11, 17, 22, 28, 33, 39]
    """
    if n_slices <= count:
        return list(range(n_slices))
    return sorted({int(index) for index in np.rint(np.linspace(0, n_slices - 1, count))})


def plane_name(normal: np.ndarray) -> str:
    """'sagittal', 'coronal' or 'axial' for a slice normal within 30° of the x, y or z patient axis, else
    'oblique' (DICOM's LPS and NIfTI's RAS axes name the same planes)."""
    axis = int(np.argmax(np.abs(normal)))
    if abs(float(normal[axis])) < math.cos(math.radians(_PLANE_TOLERANCE_DEGREES)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def volume_to_rgb(volume: SampledVolume) -> list[Image.Image]:
    """The sampled slices as RGB images (CT windows, or one grey window for the volume), with their info."""
    if volume.hounsfield:
        windows: tuple[tuple[float, float], ...] = CT_WINDOWS
        arrays = [
            np.stack([stretch_to_uint8(s, low, high) for low, high in CT_WINDOWS], axis=-1)
            for s in volume.slices
        ]
        window = "ct_hounsfield"
    else:
        if volume.display_window is not None:
            (low, high), window = volume.display_window, "dicom_window"
        else:
            values = np.concatenate([s.ravel() for s in volume.slices])
            low, high = (float(v) for v in np.percentile(values, PERCENTILES))
            if not high > low:  # a nearly constant volume: its full range, or black when truly constant
                low, high = float(values.min()), float(values.max())
            window = "volume_percentile"
        windows = ((low, high),)
        grey = [stretch_to_uint8(s, low, high) for s in volume.slices]
        arrays = [np.stack([255 - g if volume.inverted else g] * 3, axis=-1) for g in grey]
    images = []
    for position, array in enumerate(arrays):
        image = Image.fromarray(array)  # [rows, columns, 3] uint8: RGB
        image.info.update(volume.info)
        image.info.update(volume.slice_info[position] if volume.slice_info else {})
        image.info.update(
            original_size=image.size, window=window, window_values=windows, inverted=volume.inverted
        )
        images.append(image)
    return images
