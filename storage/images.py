"""Decode PNG, JPEG and DICOM bytes into the RGB image the model sees.

The pixel budget is checked from the header (Pillow opens lazily; DICOM Rows × Columns) before any
pixel is decoded, so a 20000 × 20000 decompression bomb costs microseconds, not gigabytes.
The returned image carries ``info["original_size"]`` (width, height), ``info["source_format"]`` and,
for DICOM, ``info["photometric"]`` and ``info["window"]`` (``(center, width)``, ``"minmax"``, or ``"none"``
for colour).
"""

from __future__ import annotations

import io
import posixpath
import warnings

import numpy as np
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from storage.errors import (
    CorruptImage,
    ImageTooLarge,
    MissingPixelData,
    MultiFrameImage,
    UnsupportedImageFormat,
)

DEFAULT_MAX_PIXELS = 50_000_000
EXTENSION_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".dcm": "DICOM", ".dicom": "DICOM"}
_PIXEL_DATA_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def image_format(data: bytes, name: str) -> str:
    """'PNG', 'JPEG' or 'DICOM' from the extension of ``name``, or the DICOM 'DICM' magic at byte 128."""
    if data[128:132] == b"DICM":
        return "DICOM"
    extension = posixpath.splitext(name.lower())[1]
    if extension not in EXTENSION_FORMATS:
        allowed = ", ".join(sorted(EXTENSION_FORMATS))
        raise UnsupportedImageFormat(
            f"{name}: unsupported image extension {extension or '(none)'!r}; allowed: {allowed} "
            "(or a DICOM file with the 'DICM' preamble)",
            name=name,
        )
    return EXTENSION_FORMATS[extension]


def decode_image(
    data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS, frame: int | None = None
) -> Image.Image:
    """Decode ``data`` (named ``name`` for format detection and messages) to an RGB ``PIL.Image``.

    Args:
        data: the file's bytes.
        name: file name or URI; its extension picks the decoder.
        max_pixels: reject images whose header announces more than this many pixels (width × height).
        frame: which frame of a multi-frame DICOM to decode (0-based); required for multi-frame files.

    Raises an ``ImageDecodeError`` subclass naming the file on any failure.

    >>> image = decode_image(open("cxr.dcm", "rb").read(), "cxr.dcm")
    >>> image.mode, image.info["original_size"]
    ('RGB', (2048, 2500))
    """
    kind = image_format(data, name)
    if kind == "DICOM":
        return _decode_dicom(data, name, max_pixels, frame)
    if frame not in (None, 0):
        raise MultiFrameImage(f"{name}: frame={frame} given, but a {kind} file has one frame (0)", name=name)
    return _decode_pillow(data, name, kind, max_pixels)


def _check_pixels(width: int, height: int, name: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{name}: {width}x{height} = {width * height:,} pixels exceeds max_pixels={max_pixels:,}; "
            "downsample the image or raise max_pixels",
            name=name,
        )


def _decode_pillow(data: bytes, name: str, kind: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # our own max_pixels check below replaces Pillow's warning threshold
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind])  # lazy: reads the header only
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{name}: {exc} (max_pixels={max_pixels:,})", name=name) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptImage(f"{name}: not a readable {kind} file ({exc})", name=name) from exc
    _check_pixels(image.width, image.height, name, max_pixels)
    try:
        image.load()  # force the full decode here, so truncation surfaces now and not in the model
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise CorruptImage(f"{name}: {kind} data is truncated or corrupt ({exc})", name=name) from exc
    if kind == "JPEG":
        image = ImageOps.exif_transpose(image)  # what a viewer shows, so ROI boxes drawn on it line up
    source_mode = image.mode
    if image.mode in _HIGH_DEPTH_MODES:
        # 16-bit PNGs are common for radiographs; convert("RGB") would clip them, so stretch min-max
        image = Image.fromarray(_minmax_to_uint8(np.asarray(image, dtype=np.float64)))
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # honours palette transparency before alpha is dropped
    rgb = image.convert("RGB")
    rgb.info.update(original_size=rgb.size, source_format=kind, source_mode=source_mode)
    return rgb


def _minmax_to_uint8(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) / (high - low) * 255.0).astype(np.uint8)


def _window_to_uint8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    # DICOM PS3.3 C.11.2.1.2.1 linear VOI function (VOILUTFunction SIGMOID is treated as LINEAR)
    scaled = (values - (center - 0.5)) / max(width - 1.0, 1e-9) + 0.5
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _first_value(ds: pydicom.Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if len(value) else None
    return None if value is None else float(value)


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


def _decode_dicom(data: bytes, name: str, max_pixels: int, frame: int | None) -> Image.Image:
    has_magic = data[128:132] == b"DICM"
    try:
        # force only without the preamble: accepts raw datasets named .dcm, but garbage parses "successfully"
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_magic)
        recognisable = has_magic or any(
            keyword in ds for keyword in ("SOPClassUID", "Rows", *_PIXEL_DATA_TAGS)
        )
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as exc:
        raise CorruptImage(f"{name}: not a readable DICOM file ({exc})", name=name) from exc
    if not recognisable:
        raise CorruptImage(
            f"{name}: not a DICOM file (no 'DICM' preamble and no DICOM image elements)", name=name
        )
    if not any(tag in ds for tag in _PIXEL_DATA_TAGS):
        raise MissingPixelData(
            f"{name}: DICOM has no PixelData element (SOP class {ds.get('SOPClassUID', 'unknown')}); "
            "only image objects can be decoded",
            name=name,
        )
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not rows or not columns:
        raise CorruptImage(f"{name}: DICOM lacks Rows/Columns (got {rows!r}, {columns!r})", name=name)
    _check_pixels(int(columns), int(rows), name, max_pixels)  # before decoding any pixel

    frames = int(ds.get("NumberOfFrames", 1) or 1)
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
    _default_transfer_syntax(ds)
    try:
        pixels = pixel_array(ds, index=frame if frames > 1 else None)
    except Exception as exc:  # pydicom raises many types (missing plugins, short buffers, bad tags)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and syntax.is_compressed:
            raise UnsupportedImageFormat(
                f"{name}: cannot decode DICOM transfer syntax {syntax.name} ({exc}); "
                "install a pydicom decoding plugin (pylibjpeg, python-gdcm) or convert the file",
                name=name,
            ) from exc
        raise CorruptImage(
            f"{name}: cannot decode DICOM pixel data ({type(exc).__name__}: {exc})", name=name
        ) from exc

    window: tuple[float, float] | str = "minmax"
    if pixels.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) == 3:
        # pydicom already converted YBR to RGB; no VOI windowing applies to colour images
        window = "none"
        image = Image.fromarray(pixels if pixels.dtype == np.uint8 else _minmax_to_uint8(pixels))
    elif photometric in ("MONOCHROME1", "MONOCHROME2") and pixels.ndim == 2:
        slope = _first_value(ds, "RescaleSlope") or 1.0
        intercept = _first_value(ds, "RescaleIntercept") or 0.0
        values = pixels.astype(np.float64) * slope + intercept  # modality units (e.g. HU) before windowing
        center, width = _first_value(ds, "WindowCenter"), _first_value(ds, "WindowWidth")
        if center is not None and width is not None and width >= 1.0:
            window = (center, width)
            gray = _window_to_uint8(values, center, width)
        else:
            gray = _minmax_to_uint8(values)
        if photometric == "MONOCHROME1":
            gray = 255 - gray  # MONOCHROME1: low values are bright; invert so the model sees MONOCHROME2
        image = Image.fromarray(gray).convert("RGB")
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
        frames=frames,
    )
    return image
