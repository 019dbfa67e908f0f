"""Decode PNG, JPEG and DICOM bytes into the RGB image the model sees.

The pixel budget is checked from the header (Pillow opens lazily; DICOM Rows × Columns) before any
pixel is decoded, so a 20000 × 20000 decompression bomb costs microseconds, not gigabytes.
The returned image carries ``info["original_size"]`` (width, height), ``info["source_format"]`` and,
for DICOM, ``info["photometric"]``, ``info["window"]`` (``(center, width)``, ``"voi_lut"``, ``"minmax"``,
or ``"none"`` for colour), ``info["window_fallback"]`` (why min-max replaced the header's VOI, or None)
and ``info["inverted"]``; ``storage._dicom`` documents the DICOM pipeline.
"""

from __future__ import annotations

import io
import posixpath
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from storage._dicom import decode_dicom
from storage._pixels import check_pixel_budget, minmax_to_uint8
from storage.errors import CorruptImage, ImageTooLarge, MultiFrameImage, UnsupportedImageFormat

DEFAULT_MAX_PIXELS = 50_000_000
EXTENSION_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".dcm": "DICOM", ".dicom": "DICOM"}
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # PNG, JPEG (SOI + the next marker's 0xFF)
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def image_format(data: bytes, name: str) -> str:
    """'PNG', 'JPEG' or 'DICOM' from the extension of ``name``, or the DICOM 'DICM' magic at byte 128.

    The magic decides only for bytes that do not begin with a PNG or JPEG signature: a valid PNG can
    carry 'DICM' at byte 128 in a text chunk, and sniffing must not turn it into a DICOM.
    """
    if data[128:132] == b"DICM" and not data.startswith(_SIGNATURES):
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
        return decode_dicom(data, name, max_pixels, frame)
    if frame not in (None, 0):
        raise MultiFrameImage(f"{name}: frame={frame} given, but a {kind} file has one frame (0)", name=name)
    return _decode_pillow(data, name, kind, max_pixels)


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
    check_pixel_budget(image.width, image.height, name, max_pixels)
    try:
        image.load()  # force the full decode here, so truncation surfaces now and not in the model
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise CorruptImage(f"{name}: {kind} data is truncated or corrupt ({exc})", name=name) from exc
    if kind == "JPEG":
        image = ImageOps.exif_transpose(image)  # what a viewer shows, so ROI boxes drawn on it line up
    source_mode, transparency = image.mode, image.info.get("transparency")
    if image.mode in _HIGH_DEPTH_MODES:
        # 16-bit PNGs are common for radiographs; convert("RGB") would clip them, so stretch min-max
        values = np.asarray(image, dtype=np.float64)
        gray = minmax_to_uint8(values)
        if isinstance(transparency, int):
            gray[values == transparency] = 0  # the tRNS grey value of a 16-bit PNG is transparent
        image = Image.fromarray(gray)
    elif image.mode in _ALPHA_MODES or transparency is not None:
        image = _over_black(image)
    rgb = image.convert("RGB")
    rgb.info.update(original_size=rgb.size, source_format=kind, source_mode=source_mode)
    return rgb


def _over_black(image: Image.Image) -> Image.Image:
    """Composite over opaque black: convert("RGB") would drop alpha and show the colour that transparent
    pixels hide (a label under a mask, a second image), which the model must not see. Black is the
    background of a radiograph. convert("RGBA") turns palette and tRNS colour-key transparency into
    alpha first."""
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
