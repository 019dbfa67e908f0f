"""A DICOM series (the single-frame files directly in a folder or S3 prefix) as an ordered, sampled volume.

Every file's header is read first (pydicom, stopping before the pixel data); the checks and the order
come from the headers alone, and only the sampled slices' pixels are decoded (their files are read a
second time, so a long series never sits in memory at once):

- one series: a single SeriesInstanceUID (a missing one counts as one value), else `MixedSeries`;
  one size (Rows x Columns), else `InconsistentSliceSize`; single-frame files (`MultiFrameImage`);
- order: along the slice normal n = row direction x column direction (ImageOrientationPatient), by
  position = ImagePositionPatient . n, ascending (for axial slices: feet to head). Orientations must agree
  to within 1e-3 per direction cosine (`InconsistentOrientation`). Tilted (gantry tilt), oblique,
  sagittal and coronal stacks are ordered the same way and kept as acquired (no resampling);
  ``info["orientation"]`` names the plane and ``info["stack_tilt_degrees"]`` the angle between the normal
  and the line through the first and last slice positions;
- spacing: two slices within 1e-3 mm are `DuplicateSlices`; a gap that differs from the median gap by
  more than 10% of it is `InconsistentSpacing` (a missing slice leaves a double gap);
- without a position or orientation on every file, InstanceNumber orders the slices instead (each file
  needs a distinct one, else `UnorderableSeries` or `DuplicateSlices`); ``info["slice_order"]`` says
  which order was used.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, TypeVar

import numpy as np
import pydicom
from pydicom.multival import MultiValue

from storage._dicom import linear_window, modality_values, read_header, slice_size
from storage._volume import SampledVolume, plane_name, sample_indices
from storage.errors import (
    CorruptImage,
    DuplicateSlices,
    EmptySeries,
    InconsistentOrientation,
    InconsistentSliceSize,
    InconsistentSpacing,
    MixedSeries,
    SeriesTooLong,
    UnorderableSeries,
)
from storage.inputs import InputScope
from storage.objects import StoreCache

ORIENTATION_TOLERANCE = 1e-3  # per direction cosine: headers round them to a few decimals
DUPLICATE_TOLERANCE_MM = 1e-3
SPACING_TOLERANCE = 0.10  # a gap may differ from the median gap by this fraction of it
READ_THREADS = 8  # files read at once: S3 latency, not CPU, bounds a series' read
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class _SliceHeader:
    uri: str
    series_uid: str
    modality: str
    photometric: str
    size: tuple[int, int]  # (columns, rows)
    orientation: tuple[float, ...] | None  # six direction cosines: row direction, then column direction
    position: tuple[float, ...] | None  # ImagePositionPatient (mm)
    instance_number: int | None
    window: tuple[float, float] | None  # the file's LINEAR display window (low, high), if it has one


def read_series(
    uri: str,
    scope: InputScope,
    objects: StoreCache,
    *,
    max_pixels: int,
    slices_per_volume: int,
    max_series_files: int,
) -> SampledVolume:
    """The series in folder or prefix ``uri``: ordered, checked, ``slices_per_volume`` slices decoded."""
    listing = scope.list_folder(uri, objects, limit=max_series_files)
    if listing.truncated:
        raise SeriesTooLong(
            f"{uri}: the series has more than {max_series_files:,} files; allowed: max_series_files="
            f"{max_series_files:,} (raise it, or point the manifest at a smaller series)",
            name=uri,
        )
    if not listing.files:
        inside = (
            f" (only {listing.subfolders} subfolder(s), which are not read)" if listing.subfolders else ""
        )
        raise EmptySeries(
            f"{uri}: no files in the series folder{inside}; name the folder that holds the slices", name=uri
        )
    headers = _threaded(lambda file: _header(file, scope, objects, max_pixels), listing.files)
    _check_one_series(uri, headers)
    ordered, info, positions = _order(uri, headers)
    indices = sample_indices(len(ordered), slices_per_volume)
    sampled = [ordered[index] for index in indices]
    slices = _threaded(
        lambda header: modality_values(scope.read(header.uri, objects), header.uri, max_pixels)[0], sampled
    )
    hounsfield = headers[0].modality == "CT"
    windows = {header.window for header in sampled}  # slices with windows of their own: percentiles
    slice_info = [
        {"slice_uri": header.uri, "slice_position": positions[index] if positions else None}
        for header, index in zip(sampled, indices, strict=True)
    ]
    return SampledVolume(
        n_slices=len(ordered),
        indices=indices,
        slices=[values.astype(np.float32) for values in slices],
        hounsfield=hounsfield,
        inverted=not hounsfield and headers[0].photometric == "MONOCHROME1",
        display_window=None if hounsfield or len(windows) != 1 else windows.pop(),
        info={"source_format": "DICOM series", "modality": headers[0].modality, **info},
        slice_info=slice_info,
    )


def _threaded(call: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``call`` over ``items`` on a few threads, in order; the first error cancels what has not started."""
    pool = ThreadPoolExecutor(READ_THREADS)
    try:
        return list(pool.map(call, items))
    finally:
        pool.shutdown(cancel_futures=True)


def _header(uri: str, scope: InputScope, objects: StoreCache, max_pixels: int) -> _SliceHeader:
    ds = read_header(scope.read(uri, objects), uri)
    size = slice_size(ds, uri, max_pixels)
    instance = ds.get("InstanceNumber")
    try:
        instance_number = int(instance) if instance not in (None, "") else None
    except (TypeError, ValueError):
        instance_number = None  # only the fallback order needs it, and says so when it is missing
    return _SliceHeader(
        uri=uri,
        series_uid=str(ds.get("SeriesInstanceUID", "") or "").strip(),
        modality=str(ds.get("Modality", "") or "").strip().upper(),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "").strip(),
        size=size,
        orientation=_numbers(ds, "ImageOrientationPatient", 6, uri),
        position=_numbers(ds, "ImagePositionPatient", 3, uri),
        instance_number=instance_number,
        window=linear_window(ds),
    )


def _numbers(ds: pydicom.Dataset, keyword: str, count: int, uri: str) -> tuple[float, ...] | None:
    """The element's ``count`` finite numbers; None when absent or empty, `CorruptImage` when malformed."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        written = "\\".join(str(v) for v in values)  # as DICOM writes multiple values
        raise CorruptImage(
            f"{uri}: DICOM {keyword} must be {count} numbers, got {written!r}; "
            "fix the header or re-export the series",
            name=uri,
        )
    return numbers


def _check_one_series(uri: str, headers: list[_SliceHeader]) -> None:
    series = Counter(header.series_uid for header in headers)
    if len(series) > 1:
        found = ", ".join(f"{uid or '(none)'} ({count} files)" for uid, count in series.most_common())
        raise MixedSeries(
            f"{uri}: the folder holds {len(series)} series (SeriesInstanceUID: {found}); "
            "allowed: one series per folder: give each series its own folder and URI",
            name=uri,
        )
    sizes = Counter(header.size for header in headers)
    if len(sizes) > 1:
        found = ", ".join(
            f"{columns}x{rows} ({count} files, e.g. {next(h.uri for h in headers if h.size == (columns, rows))})"
            for (columns, rows), count in sizes.most_common()
        )
        raise InconsistentSliceSize(
            f"{uri}: the slices differ in size (Columns x Rows): {found}; a series' slices share one size",
            name=uri,
        )


def _order(
    uri: str, headers: list[_SliceHeader]
) -> tuple[list[_SliceHeader], dict[str, Any], list[float] | None]:
    """(slices in order, info for every slice, positions along the normal in mm or None)."""
    if len(headers) == 1:
        return headers, {"slice_order": "single"}, None
    if all(header.orientation is not None and header.position is not None for header in headers):
        return _order_by_position(uri, headers)
    lacking = [header for header in headers if header.instance_number is None]
    if lacking:
        raise UnorderableSeries(
            f"{uri}: the slices cannot be ordered: some files lack ImagePositionPatient or "
            f"ImageOrientationPatient, and {len(lacking)} of {len(headers)} also lack InstanceNumber "
            f"(e.g. {lacking[0].uri}); each slice needs a position and orientation, or an instance number",
            name=uri,
        )
    ordered = sorted(headers, key=lambda header: header.instance_number or 0)
    for first, second in pairwise(ordered):
        if first.instance_number == second.instance_number:
            raise DuplicateSlices(
                f"{uri}: {first.uri} and {second.uri} both have InstanceNumber {first.instance_number} and "
                "no position to order them by; remove the duplicate",
                name=uri,
            )
    return ordered, {"slice_order": "instance_number"}, None


def _order_by_position(
    uri: str, headers: list[_SliceHeader]
) -> tuple[list[_SliceHeader], dict[str, Any], list[float]]:
    reference = np.array(headers[0].orientation)
    for header in headers[1:]:
        if np.max(np.abs(np.array(header.orientation) - reference)) > ORIENTATION_TOLERANCE:
            raise InconsistentOrientation(
                f"{uri}: {header.uri} has ImageOrientationPatient {list(header.orientation or ())}, "
                f"{headers[0].uri} has {list(reference)}; a series' slices share one orientation "
                f"(within {ORIENTATION_TOLERANCE} per direction cosine): a localizer in the folder?",
                name=uri,
            )
    normal = np.cross(reference[:3], reference[3:])
    if np.linalg.norm(normal) < 1e-6:
        raise CorruptImage(
            f"{headers[0].uri}: ImageOrientationPatient {list(reference)} has parallel row and column "
            "directions; fix the header",
            name=headers[0].uri,
        )
    normal = normal / np.linalg.norm(normal)
    keyed = sorted(((float(np.dot(h.position, normal)), h) for h in headers), key=lambda pair: pair[0])
    positions = [position for position, _ in keyed]
    ordered = [header for _, header in keyed]
    gaps = np.diff(positions)
    for k, gap in enumerate(gaps):
        if gap <= DUPLICATE_TOLERANCE_MM:
            raise DuplicateSlices(
                f"{uri}: {ordered[k].uri} and {ordered[k + 1].uri} are both at {positions[k]:.3f} mm along "
                "the slice normal; remove the duplicate (the same slice exported twice?)",
                name=uri,
            )
    median = float(np.median(gaps))
    for k, gap in enumerate(gaps):
        if abs(gap - median) > SPACING_TOLERANCE * median:
            raise InconsistentSpacing(
                f"{uri}: the gap between slice {k + 1} ({ordered[k].uri}) and slice {k + 2} "
                f"({ordered[k + 1].uri}) is {gap:.3f} mm, the median gap is {median:.3f} mm; allowed: "
                f"within {SPACING_TOLERANCE:.0%} of the median (a missing slice, or two stacks in one series?)",
                name=uri,
            )
    stack = np.array(ordered[-1].position) - np.array(ordered[0].position)
    tilt = math.degrees(math.acos(min(1.0, abs(float(np.dot(stack, normal))) / float(np.linalg.norm(stack)))))
    info = {
        "slice_order": "position",
        "orientation": plane_name(normal),
        "slice_normal": tuple(round(float(v), 6) for v in normal),
        "slice_spacing": median,
        "stack_tilt_degrees": round(tilt, 3),
    }
    return ordered, info, positions
