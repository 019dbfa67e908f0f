"""A manifest item's images, DICOM series and NIfTI volumes as the ordered images the model is shown.

Each URI of ``ManifestItem.image_uris`` is, in this order of tests:

- a DICOM series when it ends with '/', or names a local folder (``storage._series``: the files directly
  in it, ordered along the slice normal, checked);
- a NIfTI volume when its name ends with ``.nii`` or ``.nii.gz`` (``storage._nifti``);
- otherwise one image file (``decode_image``: PNG, JPEG, DICOM), except that an S3 URI with no object
  but objects under ``<uri>/`` is a series too (S3 has no folders to look at).

A series or volume gives ``slices_per_volume`` slices sampled uniformly along it (``storage._volume``:
CT in three Hounsfield windows, anything else in one percentile window for the whole volume).
Everything is read through ``InputScope``: the folder or prefix is checked before it is listed, and each
file of it is checked again when read, so a link inside a series folder cannot lead out of the scope.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from PIL import Image

from storage._cells import VOLUME_SUFFIXES
from storage._nifti import read_nifti
from storage._series import read_series
from storage._volume import SampledVolume, volume_to_rgb
from storage.errors import ObjectNotFound
from storage.images import decode_image
from storage.inputs import InputScope
from storage.manifests import ManifestItem
from storage.objects import StoreCache
from storage.uri import is_s3_uri

DEFAULT_SLICES_PER_VOLUME = 85  # MedGemma 1.5's CT recipe
DEFAULT_MAX_SERIES_FILES = 2048


@dataclass(frozen=True)
class StudyImage:
    """One image shown to the model: a plain image, or one sampled slice of a series or volume."""

    image: Image.Image  # RGB, decoded and windowed; info["original_size"] is its (width, height)
    uri: str  # the manifest URI it came from: the image file, the series folder or the volume
    label: str | None  # text written before the image in the prompt
    group: int  # index of that URI in ManifestItem.image_uris
    slice_index: int | None  # volumes: 0-based position of the slice in the ordered volume
    n_slices: int | None  # volumes: slices in the whole ordered volume


def read_study(
    item: ManifestItem,
    scope: InputScope,
    objects: StoreCache,
    *,
    max_pixels: int,
    slices_per_volume: int = DEFAULT_SLICES_PER_VOLUME,
    max_series_files: int = DEFAULT_MAX_SERIES_FILES,
) -> list[StudyImage]:
    """The item's images in prompt order: one per image URI, ``slices_per_volume`` (at most) per volume.

    Labels: an image gets its manifest label (None without one); a slice gets ``"slice k of n"`` (k
    1-based in the whole ordered volume), after its manifest label when there is one:
    ``"prior, slice 12 of 85"``.

    Raises an ``ImageDecodeError`` subclass (``VolumeError`` for series and volumes) or another
    ``StorageError`` naming the file, series or volume on any failure.

    >>> study = read_study(item, InputScope(manifest_uri), StoreCache(), max_pixels=50_000_000)
    >>> [(s.label, s.group) for s in study][:2]
    [('slice 1 of 212', 0), ('slice 4 of 212', 0)]
    """
    for name, value in (("slices_per_volume", slices_per_volume), ("max_series_files", max_series_files)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    labels = item.image_labels or ("",) * len(item.image_uris)
    study: list[StudyImage] = []
    for group, (uri, label) in enumerate(zip(item.image_uris, labels, strict=True)):
        read = _read(uri, scope, objects, max_pixels, slices_per_volume, max_series_files)
        if isinstance(read, Image.Image):
            study.append(StudyImage(read, uri, label or None, group, None, None))
            continue
        for index, image in zip(read.indices, volume_to_rgb(read), strict=True):
            where = f"slice {index + 1} of {read.n_slices}"
            study.append(
                StudyImage(image, uri, f"{label}, {where}" if label else where, group, index, read.n_slices)
            )
    return study


def _read(
    uri: str,
    scope: InputScope,
    objects: StoreCache,
    max_pixels: int,
    slices_per_volume: int,
    max_series_files: int,
) -> Image.Image | SampledVolume:
    def series() -> SampledVolume:
        return read_series(
            uri,
            scope,
            objects,
            max_pixels=max_pixels,
            slices_per_volume=slices_per_volume,
            max_series_files=max_series_files,
        )

    if uri.endswith("/") or (not is_s3_uri(uri) and os.path.isdir(scope.check(uri))):
        return series()
    data = _read_file(uri, scope, objects)
    if data is None:  # an S3 prefix with objects under it
        return series()
    if uri.lower().endswith(VOLUME_SUFFIXES):
        return read_nifti(
            data,
            uri,
            max_pixels=max_pixels,
            max_bytes=scope.max_image_bytes,
            slices_per_volume=slices_per_volume,
        )
    return decode_image(data, uri, max_pixels=max_pixels)


def _read_file(uri: str, scope: InputScope, objects: StoreCache) -> bytes | None:
    """The file's bytes; None for an S3 URI with no object but a prefix of objects below it (a series)."""
    try:
        return scope.read(uri, objects)
    except ObjectNotFound:
        if is_s3_uri(uri) and scope.list_folder(uri, objects, limit=1).files:
            return None
        raise
