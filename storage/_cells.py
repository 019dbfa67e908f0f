"""How each cell of a manifest row is read: types, image lists and labels, item ids, ROI boxes.

``storage.manifests`` documents the rules; a bad cell raises `RowError` with its manifest error code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from storage.errors import InvalidURIError
from storage.uri import resolve_uri

MAX_IMAGES_PER_ITEM = 128  # URIs per row; a volume counts once here, its slices are sampled when read
VOLUME_SUFFIXES = (".nii", ".nii.gz")

RoiBox = tuple[float, float, float, float]


class RowError(Exception):
    """A rejected cell: ``error_type`` is the manifest error code."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def shown(value: Any) -> str:
    """``int 5``, ``list ['a.png']``: a cell's type and value for messages, cut to 60 characters."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def text_cell(record: dict[str, Any], column: str, error_type: str, what: str) -> str:
    """The column's text with outer whitespace stripped ('' when missing); `RowError` unless it is text."""
    value = record.get(column)
    if missing(value):
        return ""
    if not isinstance(value, str):
        raise RowError(error_type, f"{column} must be {what}, got {shown(value)}")
    return value.strip()


def item_id_text(value: Any) -> str:
    """An ``item_id`` cell as text ('' when missing): strings as given, integers as their digits."""
    if missing(value):
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        # a whole float is an integer column with gaps, as pandas writes it; 2**53 bounds the exact ones
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        raise RowError(
            "InvalidItemId",
            f"item_id {value!r} is not a whole number below 2**53; write item ids as strings or integers",
        )
    raise RowError("InvalidItemId", f"item_id must be a string or an integer, got {shown(value)}")


def metadata_text(value: Any) -> str:
    """A cell as text: None/NaN → '', lists/dicts → JSON, dates → ISO 8601."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str)
    return str(value)


def parse_roi_box(value: Any) -> RoiBox | None:
    """Parse "x0,y0,x1,y1" or a list of 4 numbers (original-image pixels); None/'' → None.

    Raises ValueError unless 0 ≤ x0 < x1 and 0 ≤ y0 < y1, all finite.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        text = value.strip().strip("[]()").strip()
        if not text:
            return None
        parts: Sequence[Any] = [part.strip() for part in text.split(",")]
    elif isinstance(value, list | tuple) or hasattr(value, "tolist"):
        parts = list(value.tolist() if hasattr(value, "tolist") else value)
    else:
        raise ValueError(f"roi_box must be 'x0,y0,x1,y1' or a list of 4 numbers, got {type(value).__name__}")
    if len(parts) != 4:
        raise ValueError(f"roi_box needs 4 numbers x0,y0,x1,y1, got {len(parts)}: {value!r}")
    try:
        if any(isinstance(part, bool) for part in parts):
            raise TypeError("booleans are not coordinates")
        x0, y0, x1, y1 = (float(part) for part in parts)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"roi_box {value!r} is not 4 numbers ({exc})") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"roi_box {value!r} has a non-finite coordinate")
    if x0 < 0 or y0 < 0 or x1 <= x0 or y1 <= y0:
        raise ValueError(f"roi_box {value!r} must satisfy 0 <= x0 < x1 and 0 <= y0 < y1")
    return (x0, y0, x1, y1)


def text_or_empty(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def is_volume_uri(uri: str) -> bool:
    """True when ``uri`` names a volume by its form alone: a trailing '/' (a DICOM series folder or S3
    prefix) or a NIfTI name (``.nii``, ``.nii.gz``). A local folder without the '/' is a series too, which
    only a look at the file system tells."""
    return uri.endswith("/") or uri.lower().endswith(VOLUME_SUFFIXES)


def list_cell(value: Any, column: str, error_type: str) -> list[Any] | None:
    """A list cell (JSONL or Parquet list, or text starting with '[' read as a JSON array); None if not one."""
    if isinstance(value, list | tuple):
        return list(value)
    if not (isinstance(value, str) and value.lstrip().startswith("[")):
        return None
    try:
        return json.loads(value)  # text starting with '[' parses to a list or not at all
    except json.JSONDecodeError as exc:
        raise RowError(
            error_type,
            f"{column} starts with '[' but is not a JSON array ({exc.msg} at column {exc.colno}); "
            'write a list as ["a.dcm", "b.dcm"]',
        ) from None


def read_image_uris(value: Any, base_dir: str) -> tuple[str, ...]:
    """The ``image`` cell (one reference or a list) as canonical URIs; a trailing '/' is kept."""
    refs = list_cell(value, "image", "InvalidImageURI")
    if refs is None:
        if not missing(value) and not isinstance(value, str):
            raise RowError(
                "InvalidImageURI", f"image must be a URI string or a list of them, got {shown(value)}"
            )
        refs, names = [value if isinstance(value, str) else ""], ["image"]
    elif not refs:
        raise RowError("MissingImage", "image is an empty list; give at least one URI")
    elif len(refs) > MAX_IMAGES_PER_ITEM:
        raise RowError(
            "TooManyImages",
            f"image lists {len(refs)} URIs; at most {MAX_IMAGES_PER_ITEM} per row are allowed "
            "(a series or volume counts as one)",
        )
    else:
        names = [f"image[{index}]" for index in range(len(refs))]
    uris = []
    for name, ref in zip(names, refs, strict=True):
        if not isinstance(ref, str):
            raise RowError("InvalidImageURI", f"{name} must be a URI string, got {shown(ref)}")
        ref = ref.strip()
        if not ref:
            raise RowError("MissingImage", f"{name} is empty; give a URI or a path relative to the manifest")
        try:
            uri = resolve_uri(ref, base_dir)
        except InvalidURIError as exc:
            raise RowError("InvalidImageURI", str(exc) if name == "image" else f"{name}: {exc}") from None
        # canonical forms drop a trailing '/', which names a series folder or prefix here
        uris.append(uri + "/" if ref.endswith("/") and not uri.endswith("/") else uri)
    return tuple(uris)


def read_image_labels(value: Any, image_uris: tuple[str, ...]) -> tuple[str, ...] | None:
    """The ``image_labels`` cell: one text per image ('' for none, also from null); None when empty."""
    if missing(value) or (isinstance(value, str) and not value.strip()):
        return None
    count = len(image_uris)
    labels = list_cell(value, "image_labels", "InvalidImageLabels")
    if labels is None:
        raise RowError(
            "InvalidImageLabels",
            f"image_labels must be a list of {count} label(s), one per image (in CSV a JSON array such as "
            f'["prior", "current"]), got {shown(value)}',
        )
    if len(labels) != count:
        raise RowError(
            "InvalidImageLabels",
            f"image_labels has {len(labels)} label(s) but image has {count} URI(s); give one label per "
            "image, '' for none",
        )
    texts = []
    for index, label in enumerate(labels):
        if not missing(label) and not isinstance(label, str):
            raise RowError("InvalidImageLabels", f"image_labels[{index}] must be text, got {shown(label)}")
        texts.append(label.strip() if isinstance(label, str) else "")
    return tuple(texts) if any(texts) else None
