"""Decode DICOM bytes into the RGB image the model sees (called by ``storage.images.decode_image``).

Grey images follow the display pipeline of DICOM PS3.4 N.2, in its order, through pydicom's functions:

1. modality: the Modality LUT Sequence, else RescaleSlope/RescaleIntercept (``apply_modality_lut``);
2. VOI: the VOI LUT Sequence, else WindowCenter/WindowWidth with VOILUTFunction LINEAR, LINEAR_EXACT or
   SIGMOID (``apply_voi_lut``), stretched to 0..255 over the stage's output range: the window's (values
   below it black, above it white) or the LUT's own smallest to largest entry;
3. presentation: MONOCHROME1 or PresentationLUTShape INVERSE inverts, so the model always sees
   MONOCHROME2. The DX and MG modules require INVERSE with MONOCHROME1: one inversion stated twice.

Fallback: without a usable VOI the modality values are stretched min-max per image; ``info["window"]``
is then ``"minmax"`` and ``info["window_fallback"]`` says why (None when the header has no VOI at all).
Unusable means a window centre or width that is missing, not a number, NaN or infinite, a width below
what its function allows (>= 1 for LINEAR, > 0 otherwise), an unknown VOILUTFunction, or a VOI LUT
that pydicom cannot apply. A number the decoder cannot do without (NumberOfFrames, RescaleSlope,
RescaleIntercept) that is not a finite number is a ``CorruptImage`` instead.

Compressed frames: a JPEG, JPEG-LS or JPEG 2000 frame must end with its end marker FFD9 (after the
zero padding of an even-length fragment) before it is decoded, since lenient decoders turn a cut frame
into a full-size image of grey rows. No installed decoder for the transfer syntax is an
``UnsupportedImageFormat`` naming plugins to install; a decoder that fails on the data is a
``CorruptImage``.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from storage._pixels import check_pixel_budget, minmax_to_uint8, stretch_to_uint8
from storage.errors import CorruptImage, MissingPixelData, MultiFrameImage, UnsupportedImageFormat

_PIXEL_DATA_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_GREY = ("MONOCHROME1", "MONOCHROME2")
_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
_END_MARKER = b"\xff\xd9"  # JPEG's EOI and JPEG 2000's EOC; JPEG-LS ends with EOI too
_MARKER_KINDS = {
    **dict.fromkeys(JPEGTransferSyntaxes, "JPEG"),
    **dict.fromkeys(JPEGLSTransferSyntaxes, "JPEG-LS"),
    **dict.fromkeys(JPEG2000TransferSyntaxes, "JPEG 2000"),
}
_PLUGINS = "pylibjpeg with pylibjpeg-libjpeg or pylibjpeg-openjpeg, or python-gdcm"


def decode_dicom(data: bytes, name: str, max_pixels: int, frame: int | None) -> Image.Image:
    """Decode DICOM ``data`` to an RGB image (``storage.images.decode_image`` documents the arguments)."""
    ds = _read_dataset(data, name)
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not rows or not columns:
        raise CorruptImage(f"{name}: DICOM lacks Rows/Columns (got {rows!r}, {columns!r})", name=name)
    check_pixel_budget(int(columns), int(rows), name, max_pixels)  # before decoding any pixel
    frames = frame_count(ds, name)
    if frames > 1 and frame is None:
        raise MultiFrameImage(
            f"{name}: DICOM has {frames} frames; pass frame=0..{frames - 1} to choose one", name=name
        )
    if frame is not None and not 0 <= frame < frames:
        raise MultiFrameImage(
            f"{name}: frame={frame} is out of range; the file has {frames} frame(s): 0..{frames - 1}",
            name=name,
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    pixels = _decode_pixels(ds, name, frames, frame if frames > 1 else None)

    window: tuple[float, float] | str = "none"
    fallback, inverted = None, False
    if pixels.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) == 3:
        # pydicom already converted YBR to RGB; no VOI windowing applies to colour images
        image = Image.fromarray(pixels if pixels.dtype == np.uint8 else minmax_to_uint8(pixels))
    elif photometric in _GREY and pixels.ndim == 2:
        gray, window, fallback = _voi_to_uint8(_modality(pixels, ds, name), ds)
        shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
        # inverted on the 8-bit range, not with apply_presentation_lut, which inverts against the
        # image's own maximum and so would brighten an image whose window leaves it below white
        inverted = photometric == "MONOCHROME1" or shape == "INVERSE"
        image = Image.fromarray(255 - gray if inverted else gray).convert("RGB")
    else:
        raise UnsupportedImageFormat(
            f"{name}: DICOM PhotometricInterpretation {photometric!r} with array shape {pixels.shape} is not "
            "supported; allowed: MONOCHROME1, MONOCHROME2, RGB, YBR_*",
            name=name,
        )
    image.info.update(
        original_size=(int(columns), int(rows)),
        source_format="DICOM",
        photometric=photometric,
        window=window,
        window_fallback=fallback,
        inverted=inverted,
        frames=frames,
    )
    return image


def _read_dataset(data: bytes, name: str, *, header_only: bool = False) -> pydicom.Dataset:
    """The parsed dataset; with ``header_only`` parsing stops before the pixel data, which is not checked."""
    has_magic = data[128:132] == b"DICM"
    try:
        # force only without the preamble: accepts raw datasets named .dcm, but garbage parses "successfully"
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_magic, stop_before_pixels=header_only)
        recognisable = has_magic or any(
            keyword in ds for keyword in ("SOPClassUID", "Rows", *_PIXEL_DATA_TAGS)
        )
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as exc:
        raise CorruptImage(f"{name}: not a readable DICOM file ({exc})", name=name) from exc
    if not recognisable:
        raise CorruptImage(
            f"{name}: not a DICOM file (no 'DICM' preamble and no DICOM image elements)", name=name
        )
    if header_only:
        return ds
    if not any(tag in ds for tag in _PIXEL_DATA_TAGS):
        raise MissingPixelData(
            f"{name}: DICOM has no PixelData element (SOP class {ds.get('SOPClassUID', 'unknown')}); "
            "only image objects can be decoded",
            name=name,
        )
    _default_transfer_syntax(ds)
    return ds


def read_header(data: bytes, name: str) -> pydicom.Dataset:
    """The DICOM header of ``data``, parsed up to the pixel data (``CorruptImage`` if it is not DICOM)."""
    return _read_dataset(data, name, header_only=True)


def slice_size(ds: pydicom.Dataset, name: str, max_pixels: int) -> tuple[int, int]:
    """(columns, rows) of one slice of a series: `MissingPixelData` without Rows/Columns, the pixel
    budget checked from the header, `MultiFrameImage` for a multi-frame file."""
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not rows or not columns:
        raise MissingPixelData(
            f"{name}: DICOM has no Rows/Columns, so it is not an image; a series folder holds only its slices",
            name=name,
        )
    check_pixel_budget(int(columns), int(rows), name, max_pixels)
    frames = frame_count(ds, name)
    if frames > 1:
        raise MultiFrameImage(
            f"{name}: DICOM has {frames} frames; a series must be single-frame files, one per slice "
            "(enhanced multi-frame CT/MR is not supported: export the series as one file per slice)",
            name=name,
        )
    return int(columns), int(rows)


def modality_values(data: bytes, name: str, max_pixels: int) -> tuple[np.ndarray, pydicom.Dataset]:
    """The one grey frame of ``data`` in modality units (Hounsfield for CT) and its dataset.

    The first two steps of ``decode_dicom`` without VOI: the slices of a volume are windowed together.
    Colour and multi-frame files are refused (`UnsupportedImageFormat`, `MultiFrameImage`).
    """
    ds = _read_dataset(data, name)
    slice_size(ds, name, max_pixels)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    pixels = _decode_pixels(ds, name, 1, None)
    if photometric not in _GREY or pixels.ndim != 2:
        raise UnsupportedImageFormat(
            f"{name}: DICOM PhotometricInterpretation {photometric!r} with array shape {pixels.shape} is not "
            "a grey slice; a series' slices must be MONOCHROME1 or MONOCHROME2",
            name=name,
        )
    return _modality(pixels, ds, name), ds


def _default_transfer_syntax(ds: pydicom.Dataset) -> None:
    """Raw datasets (no file meta) are uncompressed in the encoding pydicom detected while reading them."""
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None and "TransferSyntaxUID" in file_meta:
        return
    implicit_vr, little_endian = ds.original_encoding
    ds.file_meta = file_meta if file_meta is not None else FileMetaDataset()
    if implicit_vr:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian


def frame_count(ds: pydicom.Dataset, name: str) -> int:
    """NumberOfFrames as a checked whole number (1 when absent or 0); `CorruptImage` otherwise."""
    value = ds.get("NumberOfFrames")
    if value is None or value == "":
        return 1
    if isinstance(value, int):  # pydicom's IS; an invalid IS stays the string it was written as
        count = int(value)
    else:
        text = str(value).strip()
        if not text.isdigit():
            raise CorruptImage(
                f"{name}: DICOM NumberOfFrames {text!r} is not a whole number; fix the header "
                "(1 for a single image) or re-export the file",
                name=name,
            )
        count = int(text)
    if count < 0:
        raise CorruptImage(f"{name}: DICOM NumberOfFrames {count} is negative; fix the header", name=name)
    return max(count, 1)  # 0 is read as one frame, as pydicom does


def _header_number(ds: pydicom.Dataset, keyword: str) -> tuple[float | None, str]:
    """The first value of a DS/IS element and its text; (None, "") when absent or empty.

    Raises ValueError naming the element and its text when the value is not a finite number.
    """
    value = ds.get(keyword)
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None, ""
    text = str(value).strip()
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{keyword} {text!r} is not a finite number")
    return number, text


def _decode_pixels(ds: pydicom.Dataset, name: str, frames: int, index: int | None) -> np.ndarray:
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if not syntax.is_transfer_syntax:
        raise UnsupportedImageFormat(
            f"{name}: DICOM TransferSyntaxUID {str(syntax)!r} is not a transfer syntax pydicom knows; "
            "convert the file to a standard transfer syntax",
            name=name,
        )
    if syntax.is_encapsulated:
        _check_frame_is_complete(ds, syntax, frames, index or 0, name)
    try:
        return pixel_array(ds, index=index)
    except Exception as exc:  # pydicom raises many types (missing plugins, short buffers, bad tags)
        detail = f"{type(exc).__name__}: {' '.join(str(exc).split())}"  # pydicom lists plugins on lines
        if syntax.is_compressed and not _has_decoder(syntax):
            raise UnsupportedImageFormat(
                f"{name}: no decoder for DICOM transfer syntax {syntax.name} is installed ({detail}); "
                f"install a pydicom decoding plugin ({_PLUGINS}) or convert the file",
                name=name,
            ) from exc
        if "not support" in detail or "cannot decode" in detail:
            # the installed plugin refuses this variant (Pillow and 12-bit JPEG Extended): not corrupt data
            raise UnsupportedImageFormat(
                f"{name}: the installed decoder cannot handle this DICOM {syntax.name} data ({detail}); "
                f"install another pydicom decoding plugin ({_PLUGINS}) or convert the file",
                name=name,
            ) from exc
        raise CorruptImage(
            f"{name}: DICOM {syntax.name} pixel data could not be decoded ({detail}); the data is corrupt "
            "or truncated: re-export or re-transfer the file",
            name=name,
        ) from exc


def _has_decoder(syntax: UID) -> bool:
    try:
        return bool(get_decoder(syntax).is_available)
    except NotImplementedError:  # pydicom has no decoder class at all for this syntax (MPEG, ...)
        return False


def _check_frame_is_complete(ds: pydicom.Dataset, syntax: UID, frames: int, index: int, name: str) -> None:
    """Raise `CorruptImage` when frame ``index`` of a JPEG-family codestream lacks its end marker."""
    kind = _MARKER_KINDS.get(syntax)
    if kind is None:  # RLE and the rest carry no end marker; their decoders check the decoded length
        return
    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        encoded = get_frame(ds.PixelData, index, number_of_frames=frames, extended_offsets=offsets)
    except Exception as exc:  # malformed items, offset tables pointing past the end, ...
        raise CorruptImage(
            f"{name}: frame {index} cannot be found in the encapsulated DICOM pixel data "
            f"({type(exc).__name__}: {exc}); the file is corrupt or truncated",
            name=name,
        ) from exc
    if not encoded.rstrip(b"\x00").endswith(_END_MARKER):
        raise CorruptImage(
            f"{name}: frame {index} of the {kind} pixel data ({syntax.name}) ends without the end-of-image "
            f"marker FFD9 after {len(encoded):,} bytes, so the frame is truncated; re-export or re-transfer "
            "the file",
            name=name,
        )


def _modality(pixels: np.ndarray, ds: pydicom.Dataset, name: str) -> np.ndarray:
    """Stored values to modality units (e.g. Hounsfield) through pydicom's ``apply_modality_lut``."""
    try:
        slope, slope_text = _header_number(ds, "RescaleSlope")
        intercept, _ = _header_number(ds, "RescaleIntercept")
    except ValueError as exc:
        raise CorruptImage(f"{name}: DICOM {exc}; fix the header or re-export the file", name=name) from None
    if slope == 0:
        raise CorruptImage(
            f"{name}: DICOM RescaleSlope {slope_text!r} maps every pixel to one value; fix the header "
            "(1 when the stored values are the modality values)",
            name=name,
        )
    if slope is not None or intercept is not None:
        # pydicom rescales only when both are present, and multiplies by the element as it is:
        # store the checked first values, the missing one as its identity
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about DS strings over 16 characters
            ds.RescaleSlope = 1.0 if slope is None else slope
            ds.RescaleIntercept = 0.0 if intercept is None else intercept
    try:
        return apply_modality_lut(pixels, ds)
    except Exception as exc:  # a malformed Modality LUT Sequence (short LUTData, bad descriptor)
        raise CorruptImage(
            f"{name}: DICOM Modality LUT Sequence cannot be applied ({type(exc).__name__}: {exc}); "
            "fix or remove it",
            name=name,
        ) from exc


def _voi_to_uint8(
    values: np.ndarray, ds: pydicom.Dataset
) -> tuple[np.ndarray, tuple[float, float] | str, str | None]:
    """(gray uint8, window used, why min-max was used instead) for modality ``values``."""
    reasons = []
    if ds.get("VOILUTSequence"):
        try:
            return _voi_lut_to_uint8(values, ds), "voi_lut", None
        except Exception as exc:  # descriptor, data or depth pydicom cannot use
            reasons.append(f"VOI LUT Sequence cannot be applied ({type(exc).__name__}: {exc})")
            del ds.VOILUTSequence  # so that apply_voi_lut falls back to the window
    window, problem = _usable_window(ds)
    if window is not None:
        try:
            windowed = apply_voi_lut(values, ds, prefer_lut=False)
            # the window's output range, as pydicom defines it (from BitsStored, the rescale or the
            # Modality LUT): what pydicom maps values far below and far above the window to
            low, high = apply_voi_lut(np.array([-np.inf, np.inf]), ds, prefer_lut=False)
            return stretch_to_uint8(windowed, low, high), window, None
        except Exception as exc:
            problem = f"the window cannot be applied ({type(exc).__name__}: {exc})"
    if problem:
        reasons.append(problem)
    return minmax_to_uint8(values), "minmax", "; ".join(reasons) or None


def _voi_lut_to_uint8(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    item = ds.VOILUTSequence[0]
    if "LUTData" not in item:
        raise ValueError("the first item has no LUTData")
    entries, first, _bits = (int(value) for value in item.LUTDescriptor)
    entries = entries or 2**16  # PS3.3 C.11.2.1.1: 0 means 65536 entries
    domain = np.arange(first, first + entries)
    # pydicom indexes through uint16, so an input past 65535 would wrap; the standard clamps it
    inputs = np.clip(np.rint(values), first, first + entries - 1).astype(np.int64)
    mapped = apply_voi_lut(inputs, ds, prefer_lut=True)
    outputs = apply_voi_lut(domain, ds, prefer_lut=True)
    # stretched over the LUT's own range: descriptors often claim 16 bits for 12-bit LUT data
    return stretch_to_uint8(mapped, float(outputs.min()), float(outputs.max()))


def linear_window(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """(low, high) in modality units of the file's own LINEAR display window (WindowCenter/WindowWidth,
    as a viewer opens it); None without a usable one or for a SIGMOID window."""
    window, _problem = _usable_window(ds)
    if window is None or str(ds.VOILUTFunction) == "SIGMOID":
        return None
    center, width = window
    return center - width / 2, center + width / 2


def _usable_window(ds: pydicom.Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """((center, width), None) when the window can be applied, else (None, why not); (None, None) without one."""
    if "WindowCenter" not in ds and "WindowWidth" not in ds:
        return None, None
    try:
        center, _ = _header_number(ds, "WindowCenter")
        width, width_text = _header_number(ds, "WindowWidth")
    except ValueError as exc:
        return None, str(exc)
    if center is None or width is None:
        return None, f"{'WindowCenter' if center is None else 'WindowWidth'} is missing"
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if function not in _VOI_FUNCTIONS:
        return None, f"VOILUTFunction {function!r} is not one of {', '.join(_VOI_FUNCTIONS)}"
    if not (width >= 1.0 if function == "LINEAR" else width > 0.0):
        return (
            None,
            f"WindowWidth {width_text!r} is too narrow for {function} (needs >= 1 for LINEAR, > 0 else)",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about DS strings over 16 characters
        # the checked first pair only: pydicom reads a multi-valued element as strings when any value is
        # invalid, and does not default an empty VOILUTFunction
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    return (center, width), None
