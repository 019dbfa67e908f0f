"""A NIfTI-1 or NIfTI-2 volume (``.nii``, ``.nii.gz``) as an ordered, sampled volume, through nibabel.

- bytes: a gzip stream (by its magic, whatever the name) is decompressed here, at most ``max_bytes``
  bytes of output (`ImageTooLarge` beyond: a decompression-bomb guard); nibabel reads the result from
  memory (``Nifti1Image.from_bytes``);
- slices: along the third voxel axis (a 2-D image is one slice; trailing axes of length 1 are dropped,
  longer ones, as in time series, are `UnsupportedImageFormat`). The affine orders them: when the third
  axis runs toward decreasing patient coordinates (its column of the affine points down that axis, as
  ``nibabel.orientations.io_orientation`` reads it) the slices are reversed, so slice 1 is the lowest
  along the patient axis (for axial slices: feet to head, as DICOM series are ordered);
- in-plane: the image's columns follow the lower-numbered patient axis of the two in the plane and its
  rows the other, both running toward decreasing RAS coordinates (patient left, posterior, inferior):
  how a DICOM viewer shows axial, coronal and sagittal planes (an axial slice has the patient's right on
  the image's left and anterior at the top). An affine without a usable direction keeps the stored order;
- values: the stored values scaled by scl_slope / scl_inter (nibabel's array proxy, one slice at a time,
  as ``get_fdata`` scales them); non-finite values are set to the smallest finite one (black);
- CT: a volume whose sampled values reach <= -500 and >= 300 is taken to be in Hounsfield units and gets
  the CT windows; anything else the volume's percentile window.
"""

from __future__ import annotations

import zlib
from typing import Any

import nibabel
import numpy as np
from nibabel.orientations import io_orientation

from storage._pixels import check_pixel_budget
from storage._volume import SampledVolume, plane_name, sample_indices
from storage.errors import CorruptImage, ImageTooLarge, UnsupportedImageFormat

GZIP_MAGIC = b"\x1f\x8b"
HOUNSFIELD_MIN, HOUNSFIELD_MAX = -500.0, 300.0  # air below, bone above: a CT in Hounsfield units
_HEADER_SIZES = {348: nibabel.Nifti1Image, 540: nibabel.Nifti2Image}  # sizeof_hdr, the first 4 bytes


def read_nifti(
    data: bytes, uri: str, *, max_pixels: int, max_bytes: int, slices_per_volume: int
) -> SampledVolume:
    """The volume in ``data`` (named ``uri``): ordered by its affine, ``slices_per_volume`` slices read."""
    image = _load(_gunzip(data, uri, max_bytes) if data[:2] == GZIP_MAGIC else data, uri)
    shape = image.shape
    if len(shape) < 2 or any(length != 1 for length in shape[3:]):
        raise UnsupportedImageFormat(
            f"{uri}: NIfTI image has shape {shape}; allowed: a 3-D volume (or one 2-D slice), not a 4-D "
            "series (time, diffusion directions): split it into one volume per URI",
            name=uri,
        )
    dtype = image.get_data_dtype()
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise UnsupportedImageFormat(
            f"{uri}: NIfTI data type {dtype} is not grey values; allowed: integer or float voxels", name=uri
        )
    check_pixel_budget(int(shape[0]), int(shape[1]), uri, max_pixels)
    n_slices = int(shape[2]) if len(shape) > 2 else 1
    orientation = io_orientation(image.affine)  # row k: (patient axis, +1 or -1) of voxel axis k
    known = not np.isnan(orientation).any()
    reverse = known and orientation[2, 1] < 0
    indices = sample_indices(n_slices, slices_per_volume)
    slices = []
    for index in indices:
        voxel_index = n_slices - 1 - index if reverse else index
        plane = _read_slice(image, voxel_index, uri)
        slices.append(_display(plane, orientation) if known else plane.T)
    finite = [s[np.isfinite(s)] for s in slices]
    lowest = min((float(f.min()) for f in finite if f.size), default=0.0)
    highest = max((float(f.max()) for f in finite if f.size), default=0.0)
    slices = [np.where(np.isfinite(s), s, lowest).astype(np.float32) for s in slices]
    info: dict[str, Any] = {"source_format": "NIfTI", "slice_order": "affine" if known else "stored"}
    if known:
        axis = image.affine[:3, 2]  # the third voxel axis in patient space
        info["orientation"] = plane_name(axis / np.linalg.norm(axis))
        info["slice_axis_reversed"] = bool(reverse)
    if len(shape) > 2:
        info["slice_spacing"] = float(image.header.get_zooms()[2])
    return SampledVolume(
        n_slices=n_slices,
        indices=indices,
        slices=slices,
        hounsfield=lowest <= HOUNSFIELD_MIN and highest >= HOUNSFIELD_MAX,
        info=info,
    )


def _gunzip(data: bytes, uri: str, max_bytes: int) -> bytes:
    """Every gzip member of ``data``, decompressed, refusing more than ``max_bytes`` of output."""
    output = bytearray()
    while data:
        stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            output += stream.decompress(data, max_bytes + 1 - len(output))
        except zlib.error as exc:
            raise CorruptImage(f"{uri}: the gzip data is corrupt ({exc})", name=uri) from exc
        if len(output) > max_bytes:
            raise ImageTooLarge(
                f"{uri}: decompresses to more than max_image_bytes={max_bytes:,} bytes; raise "
                "max_image_bytes (--max-image-bytes) to read it",
                name=uri,
            )
        if not stream.eof:
            raise CorruptImage(f"{uri}: the gzip data is truncated after {len(output):,} bytes", name=uri)
        data = stream.unused_data.lstrip(b"\x00")  # some writers pad between or after members
    return bytes(output)


def _load(raw: bytes, uri: str) -> nibabel.Nifti1Image:
    size = int.from_bytes(raw[:4], "little")
    kind = _HEADER_SIZES.get(size) or _HEADER_SIZES.get(int.from_bytes(raw[:4], "big"))
    if kind is None:
        raise CorruptImage(
            f"{uri}: not a NIfTI-1 or NIfTI-2 file (its first 4 bytes, sizeof_hdr, are not 348 or 540)",
            name=uri,
        )
    try:
        return kind.from_bytes(raw)
    except Exception as exc:  # nibabel raises HeaderDataError, ValueError, struct errors ...
        raise CorruptImage(
            f"{uri}: not a readable NIfTI file ({type(exc).__name__}: {exc})", name=uri
        ) from exc


def _read_slice(image: nibabel.Nifti1Image, index: int, uri: str) -> np.ndarray:
    """Voxels [axis 0, axis 1] of slice ``index`` along the third axis, scaled, as float32."""
    extra = (0,) * (len(image.shape) - 3)
    where = (slice(None), slice(None), index, *extra) if len(image.shape) > 2 else (slice(None), slice(None))
    try:
        return np.asarray(image.dataobj[where], dtype=np.float32)
    except Exception as exc:  # the data is shorter than the header's shape, or unreadable
        raise CorruptImage(
            f"{uri}: NIfTI voxel data cannot be read ({type(exc).__name__}: {exc}); the file is truncated "
            "or its header does not match its data",
            name=uri,
        ) from exc


def _display(plane: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """``plane`` [axis 0, axis 1] as [rows, columns] the way a DICOM viewer shows it (module docstring)."""
    (axis0, sign0), (axis1, sign1) = orientation[0], orientation[1]
    if axis0 < axis1:  # columns follow voxel axis 0
        image, column_sign, row_sign = plane.T, sign0, sign1
    else:
        image, column_sign, row_sign = plane, sign1, sign0
    if column_sign > 0:  # toward increasing RAS coordinates: flip to run toward decreasing ones
        image = image[:, ::-1]
    if row_sign > 0:
        image = image[::-1, :]
    return image
