"""Read and validate audit manifests (CSV, JSONL, Parquet) into items and per-row error records.

Columns: ``image`` and ``question`` are required; ``item_id``, ``roi_box`` and ``roi_mask`` are optional;
every other column is cohort metadata passed through as strings. A missing required column fails the
whole manifest (``ManifestError``); a bad row becomes an ``ErrorRecord`` and the rest go on.
``row_number`` is the 1-based index of the data record in file order (header and blank lines not counted).

Types (JSONL and Parquet cells are typed; CSV cells are all text): ``image``, ``question`` and
``roi_mask`` must be text; a list in ``image`` is ``MultipleImages`` (one image per row). ``item_id`` is
text or an integer, written as its digits; a float that is a whole number becomes those digits too
(pandas turns an integer column with gaps into floats), any other float is ``InvalidItemId``. None
and NaN count as empty. A JSON object that repeats a key is ``MalformedRow``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import pyarrow.parquet as pq

from storage.errors import InvalidURIError, ManifestError
from storage.objects import StoreCache
from storage.records import ErrorRecord
from storage.uri import normalize_uri, parent_uri, resolve_uri, uri_name

REQUIRED_COLUMNS = ("image", "question")
RESERVED_COLUMNS = ("image", "question", "item_id", "roi_box", "roi_mask")
MANIFEST_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
ITEM_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")  # a safe file name, no leading '.'

RoiBox = tuple[float, float, float, float]


@dataclass(frozen=True)
class ManifestItem:
    """One valid manifest row. ``image_uri``/``roi_mask_uri`` are canonical (see ``storage.uri``)."""

    item_id: str
    image_uri: str
    question: str
    roi_box: RoiBox | None
    roi_mask_uri: str | None
    metadata: dict[str, str]
    row_number: int


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: valid items in file order, and one error record per rejected row."""

    uri: str
    columns: tuple[str, ...]
    items: tuple[ManifestItem, ...]
    errors: tuple[ErrorRecord, ...]


class _RowError(Exception):
    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class _RepeatedKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def stable_item_id(image_uri: str, question: str) -> str:
    """16 hex chars of sha256(image_uri + "\\n" + question): the id of a row without ``item_id``."""
    return hashlib.sha256(f"{image_uri}\n{question}".encode()).hexdigest()[:16]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _shown(value: Any) -> str:
    """``int 5``, ``list ['a.png']``: a cell's type and value for messages, cut to 60 characters."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _text_cell(record: dict[str, Any], column: str, error_type: str, what: str) -> str:
    """The column's text with outer whitespace stripped ('' when missing); `_RowError` unless it is text."""
    value = record.get(column)
    if _missing(value):
        return ""
    if not isinstance(value, str):
        raise _RowError(error_type, f"{column} must be {what}, got {_shown(value)}")
    return value.strip()


def _item_id_text(value: Any) -> str:
    """An ``item_id`` cell as text ('' when missing): strings as given, integers as their digits."""
    if _missing(value):
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        # a whole float is an integer column with gaps, as pandas writes it; 2**53 bounds the exact ones
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        raise _RowError(
            "InvalidItemId",
            f"item_id {value!r} is not a whole number below 2**53; write item ids as strings or integers",
        )
    raise _RowError("InvalidItemId", f"item_id must be a string or an integer, got {_shown(value)}")


def _text(value: Any) -> str:
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


def _records_csv(data: bytes, uri: str) -> tuple[list[str], list[tuple[int, dict[str, Any] | str]]]:
    try:
        text = data.decode("utf-8-sig")  # tolerate the BOM that spreadsheet exports add
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest {uri} is not UTF-8 text ({exc})") from exc
    rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    if not rows:
        raise ManifestError(f"manifest {uri} is empty: expected a header row with columns {REQUIRED_COLUMNS}")
    header = [name.strip() for name in rows[0]]
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise ManifestError(f"manifest {uri} repeats column(s) {duplicates}; each column name must be unique")
    records: list[tuple[int, dict[str, Any] | str]] = []
    for row_number, row in enumerate(rows[1:], start=1):
        if len(row) != len(header):
            records.append((row_number, f"row has {len(row)} fields, header has {len(header)}"))
        else:
            records.append((row_number, dict(zip(header, row, strict=True))))
    return header, records


def _records_jsonl(data: bytes, uri: str) -> tuple[list[str], list[tuple[int, dict[str, Any] | str]]]:
    try:
        lines = [line for line in data.decode("utf-8-sig").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest {uri} is not UTF-8 text ({exc})") from exc
    columns: dict[str, None] = {}  # insertion-ordered union of keys
    records: list[tuple[int, dict[str, Any] | str]] = []
    for row_number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            records.append((row_number, f"invalid JSON ({exc.msg} at column {exc.colno})"))
            continue
        except _RepeatedKey as exc:
            message = (
                f"JSON object repeats key {exc.key!r}; give each key once (readers disagree on which wins)"
            )
            records.append((row_number, message))
            continue
        if not isinstance(record, dict):
            records.append((row_number, f"expected a JSON object, got {type(record).__name__}"))
            continue
        columns.update(dict.fromkeys(str(key) for key in record))
        records.append((row_number, {str(key): value for key, value in record.items()}))
    return list(columns), records


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` hook: the object as a dict, or `_RepeatedKey` (plain dicts keep the last value)."""
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise _RepeatedKey(key)
        record[key] = value
    return record


def _records_parquet(data: bytes, uri: str) -> tuple[list[str], list[tuple[int, dict[str, Any] | str]]]:
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError subclasses for bad files
        raise ManifestError(f"manifest {uri} is not a readable Parquet file ({exc})") from exc
    return table.column_names, list(enumerate(table.to_pylist(), start=1))


_READERS = {"csv": _records_csv, "jsonl": _records_jsonl, "parquet": _records_parquet}


def parse_manifest(data: bytes, uri: str) -> Manifest:
    """Validate manifest bytes; ``uri`` gives the format (extension) and the base of relative paths."""
    uri = normalize_uri(uri)
    name = uri_name(uri).lower()
    fmt = next((kind for ext, kind in MANIFEST_FORMATS.items() if name.endswith(ext)), None)
    if fmt is None:
        raise ManifestError(
            f"manifest {uri} has an unknown extension; allowed: {', '.join(MANIFEST_FORMATS)}"
        )
    columns, records = _READERS[fmt](data, uri)
    missing = [column for column in REQUIRED_COLUMNS if column not in columns]
    if missing and (columns or records):  # an empty JSONL has no columns to check
        raise ManifestError(
            f"manifest {uri} lacks required column(s) {', '.join(missing)}; "
            f"found: {', '.join(columns) or '(none)'}"
        )
    metadata_columns = [column for column in columns if column not in RESERVED_COLUMNS]
    base_dir = parent_uri(uri)
    items: list[ManifestItem] = []
    errors: list[ErrorRecord] = []
    seen: dict[str, int] = {}  # item_id → row_number of the valid row that claimed it
    for row_number, record in records:
        if isinstance(record, str):
            errors.append(ErrorRecord(None, row_number, None, "manifest", "MalformedRow", record))
            continue
        try:
            item = _validate_row(record, row_number, base_dir, metadata_columns, seen)
        except _RowError as exc:
            errors.append(_row_error(record, row_number, base_dir, exc))
            continue
        seen[item.item_id] = row_number
        items.append(item)
    return Manifest(uri, tuple(columns), tuple(items), tuple(errors))


def _row_error(record: dict[str, Any], row_number: int, base_dir: str, exc: _RowError) -> ErrorRecord:
    """The error record of a rejected row, with as much identity (id, image URI) as could be derived."""
    image, question = (_text_or_empty(record.get(column)) for column in ("image", "question"))
    try:
        image_uri = resolve_uri(image, base_dir) if image else None
    except InvalidURIError:
        image_uri = None
    try:
        item_id = _item_id_text(record.get("item_id")) or None
    except _RowError:
        item_id = None
    if item_id is None and image_uri and question:
        item_id = stable_item_id(image_uri, question)
    return ErrorRecord(item_id, row_number, image_uri, "manifest", exc.error_type, str(exc))


def _text_or_empty(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _validate_row(
    record: dict[str, Any], row_number: int, base_dir: str, metadata_columns: list[str], seen: dict[str, int]
) -> ManifestItem:
    images = record.get("image")
    if isinstance(images, list | tuple):
        raise _RowError(
            "MultipleImages",
            f"image is a list of {len(images)} ({_shown(images)}); one image URI per row is supported "
            "(lists are for multi-image studies, not supported yet): give one URI as a string, one row per image",
        )
    image = _text_cell(record, "image", "InvalidImageURI", "a URI string")
    if not image:
        raise _RowError("MissingImage", "image is empty; give a URI or a path relative to the manifest")
    try:
        image_uri = resolve_uri(image, base_dir)
    except InvalidURIError as exc:
        raise _RowError("InvalidImageURI", str(exc)) from None
    question = _text_cell(record, "question", "InvalidQuestion", "text")
    if not question:
        raise _RowError("MissingQuestion", "question is empty")
    item_id = _item_id_text(record.get("item_id")) or stable_item_id(image_uri, question)
    if not ITEM_ID_PATTERN.match(item_id):
        raise _RowError(
            "InvalidItemId",
            f"item_id {item_id!r} is unsafe; allowed: 1-128 characters of [A-Za-z0-9._-], not starting with '.'",
        )
    try:
        roi_box = parse_roi_box(record.get("roi_box"))
    except ValueError as exc:
        raise _RowError("InvalidRoiBox", str(exc)) from None
    mask = _text_cell(record, "roi_mask", "InvalidRoiMask", "one URI string")
    try:
        roi_mask_uri = resolve_uri(mask, base_dir) if mask else None
    except InvalidURIError as exc:
        raise _RowError("InvalidRoiMask", str(exc)) from None
    if roi_box is not None and roi_mask_uri is not None:
        raise _RowError("ConflictingRoi", "give roi_box or roi_mask, not both")
    if item_id in seen:
        raise _RowError("DuplicateItemId", f"item_id {item_id!r} is already used by row {seen[item_id]}")
    metadata = {column: _text(record.get(column)) for column in metadata_columns}
    return ManifestItem(item_id, image_uri, question, roi_box, roi_mask_uri, metadata, row_number)


def read_manifest(
    uri: str, *, endpoint_url: str | None = None, region: str | None = None, cache: StoreCache | None = None
) -> Manifest:
    """Read and validate the manifest at ``uri`` (local path, ``file://`` or ``s3://``).

    >>> manifest = read_manifest("s3://scans/batch-07/manifest.csv")
    >>> len(manifest.items), [e.error_type for e in manifest.errors]
    (998, ['MissingQuestion', 'DuplicateItemId'])
    """
    cache = cache or StoreCache(endpoint_url=endpoint_url, region=region)
    return parse_manifest(cache.read_uri(uri), uri)


def manifest_fingerprint(manifest: Manifest) -> str:
    """sha256 hex of the valid items' content in order (row numbers excluded): equal inputs, equal runs."""
    content = [
        [
            item.item_id,
            item.image_uri,
            item.question,
            item.roi_box,
            item.roi_mask_uri,
            sorted(item.metadata.items()),
        ]
        for item in manifest.items
    ]
    return hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()


def shard(items: Sequence[ManifestItem], size: int) -> list[tuple[ManifestItem, ...]]:
    """Split ``items`` into consecutive shards of ``size`` (the last may be shorter), in order."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"shard size must be a positive integer, got {size!r}")
    return [tuple(items[start : start + size]) for start in range(0, len(items), size)]
