"""Read and validate audit manifests (CSV, JSONL, Parquet) into items and per-row error records.

Columns: ``image`` and ``question`` are required; ``answer`` (the answer the audited model gave,
explained as given), ``image_labels``, ``item_id``, ``roi_box`` and
``roi_mask`` are optional; every other column is cohort metadata passed through as strings. A missing
required column fails the whole manifest (``ManifestError``); a bad row becomes an ``ErrorRecord`` and
the rest go on.
``row_number`` is the 1-based index of the data record in file order (header and blank lines not counted).

Types (JSONL and Parquet cells are typed; CSV cells are all text): ``image`` is one URI or a list of
1 to ``MAX_IMAGES_PER_ITEM`` URIs (a JSONL or Parquet list, or text starting with '[' read as a JSON
array, as CSV needs); a URI ending in '/' (a DICOM series folder or prefix) keeps the '/'.
``image_labels`` is empty or a list of texts, one per URI (same forms; '' or null for none). An ROI
needs a single image that is not a volume (``AmbiguousRoi``). ``question`` and ``roi_mask`` must be
text. ``item_id`` is text or an integer, written as its digits; a float that is a whole number becomes
those digits too (pandas turns an integer column with gaps into floats), any other float is
``InvalidItemId``. None and NaN count as empty. A JSON object that repeats a key is ``MalformedRow``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from storage._cells import MAX_IMAGES_PER_ITEM as MAX_IMAGES_PER_ITEM  # re-exported
from storage._cells import (
    RoiBox,
    RowError,
    is_volume_uri,
    item_id_text,
    metadata_text,
    parse_roi_box,
    read_image_labels,
    read_image_uris,
    text_cell,
    text_or_empty,
)
from storage.errors import InvalidURIError, ManifestError
from storage.objects import StoreCache
from storage.records import ErrorRecord
from storage.uri import normalize_uri, parent_uri, resolve_uri, uri_name

REQUIRED_COLUMNS = ("image", "question")
RESERVED_COLUMNS = ("image", "image_labels", "question", "answer", "item_id", "roi_box", "roi_mask")
MANIFEST_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
ITEM_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")  # a safe file name, no leading '.'


@dataclass(frozen=True)
class ManifestItem:
    """One valid manifest row. URIs are canonical (see ``storage.uri``); a series folder written with a
    trailing '/' keeps it.

    ``image_uris`` are the row's images, DICOM series and NIfTI volumes in prompt order;
    ``image_labels`` holds one text per URI ('' for none), or is None when the row gives no labels.
    """

    item_id: str
    image_uris: tuple[str, ...]
    question: str
    roi_box: RoiBox | None
    roi_mask_uri: str | None
    metadata: dict[str, str]
    row_number: int
    image_labels: tuple[str, ...] | None = None
    answer: str | None = None  # the answer the audited model gave (logged): explained as given, not generated

    def __post_init__(self) -> None:
        uris, labels = self.image_uris, self.image_labels
        # a bare string would pass as a tuple of characters: image_uri would be its first letter
        if not isinstance(uris, tuple) or not uris or not all(isinstance(uri, str) for uri in uris):
            raise TypeError(f"image_uris must be a non-empty tuple of URI strings, got {uris!r}")
        if labels is not None and (not isinstance(labels, tuple) or len(labels) != len(uris)):
            raise ValueError(f"image_labels must be None or a tuple of {len(uris)} texts, got {labels!r}")

    @property
    def image_uri(self) -> str:
        """The first URI: the image of a single-image row."""
        return self.image_uris[0]


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: valid items in file order, and one error record per rejected row."""

    uri: str
    columns: tuple[str, ...]
    items: tuple[ManifestItem, ...]
    errors: tuple[ErrorRecord, ...]


class _RepeatedKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def stable_item_id(
    image_uris: str | Sequence[str], question: str, image_labels: Sequence[str] | None = None
) -> str:
    """16 hex chars of sha256 of the row's images, labels and question: the id of a row without ``item_id``.

    One image without labels hashes ``image_uri + "\\n" + question`` (the ids of single-image manifests);
    anything else hashes the JSON array ``[image_uris, image_labels, question]``.
    """
    uris = [image_uris] if isinstance(image_uris, str) else list(image_uris)
    if len(uris) == 1 and image_labels is None:
        content = f"{uris[0]}\n{question}"
    else:
        content = json.dumps([uris, None if image_labels is None else list(image_labels), question])
    return hashlib.sha256(content.encode()).hexdigest()[:16]


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
        except RowError as exc:
            errors.append(_row_error(record, row_number, base_dir, exc))
            continue
        seen[item.item_id] = row_number
        items.append(item)
    return Manifest(uri, tuple(columns), tuple(items), tuple(errors))


def _row_error(record: dict[str, Any], row_number: int, base_dir: str, exc: RowError) -> ErrorRecord:
    """The error record of a rejected row, with as much identity (id, first image URI) as could be derived."""
    try:
        image_uris: tuple[str, ...] | None = read_image_uris(record.get("image"), base_dir)
    except RowError:
        image_uris = None
    try:
        item_id = item_id_text(record.get("item_id")) or None
    except RowError:
        item_id = None
    question = text_or_empty(record.get("question"))
    if item_id is None and image_uris and question:
        try:
            item_id = stable_item_id(
                image_uris, question, read_image_labels(record.get("image_labels"), image_uris)
            )
        except RowError:
            item_id = None
    image_uri = image_uris[0] if image_uris else None
    return ErrorRecord(item_id, row_number, image_uri, "manifest", exc.error_type, str(exc))


def _validate_row(
    record: dict[str, Any], row_number: int, base_dir: str, metadata_columns: list[str], seen: dict[str, int]
) -> ManifestItem:
    image_uris = read_image_uris(record.get("image"), base_dir)
    image_labels = read_image_labels(record.get("image_labels"), image_uris)
    question = text_cell(record, "question", "InvalidQuestion", "text")
    if not question:
        raise RowError("MissingQuestion", "question is empty")
    item_id = item_id_text(record.get("item_id")) or stable_item_id(image_uris, question, image_labels)
    if not ITEM_ID_PATTERN.match(item_id):
        raise RowError(
            "InvalidItemId",
            f"item_id {item_id!r} is unsafe; allowed: 1-128 characters of [A-Za-z0-9._-], not starting with '.'",
        )
    try:
        roi_box = parse_roi_box(record.get("roi_box"))
    except ValueError as exc:
        raise RowError("InvalidRoiBox", str(exc)) from None
    mask = text_cell(record, "roi_mask", "InvalidRoiMask", "one URI string")
    try:
        roi_mask_uri = resolve_uri(mask, base_dir) if mask else None
    except InvalidURIError as exc:
        raise RowError("InvalidRoiMask", str(exc)) from None
    if roi_box is not None and roi_mask_uri is not None:
        raise RowError("ConflictingRoi", "give roi_box or roi_mask, not both")
    if (roi_box is not None or roi_mask_uri is not None) and (
        len(image_uris) > 1 or is_volume_uri(image_uris[0])
    ):
        what = f"{len(image_uris)} URIs" if len(image_uris) > 1 else f"a volume ({image_uris[0]})"
        raise RowError(
            "AmbiguousRoi",
            f"roi_box and roi_mask are in one image's pixels, but image names {what}; "
            "give an ROI only with a single image",
        )
    if item_id in seen:
        raise RowError("DuplicateItemId", f"item_id {item_id!r} is already used by row {seen[item_id]}")
    answer = text_cell(record, "answer", "InvalidAnswer", "text (the answer the model gave)") or None
    metadata = {column: metadata_text(record.get(column)) for column in metadata_columns}
    return ManifestItem(
        item_id, image_uris, question, roi_box, roi_mask_uri, metadata, row_number, image_labels, answer
    )


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
    """sha256 hex of the valid items' content in order (row numbers excluded): equal inputs, equal runs.

    A single-image row without labels or given answer hashes as before they existed, so earlier run ids
    stay valid.
    """
    content = []
    for item in manifest.items:
        images: str | list[str] = item.image_uri if len(item.image_uris) == 1 else list(item.image_uris)
        row = [
            item.item_id,
            images,
            item.question,
            item.roi_box,
            item.roi_mask_uri,
            sorted(item.metadata.items()),
        ]
        if item.image_labels is not None:
            row.append(list(item.image_labels))
        if item.answer is not None:
            row.append({"answer": item.answer})
        content.append(row)
    return hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()


def shard(items: Sequence[ManifestItem], size: int) -> list[tuple[ManifestItem, ...]]:
    """Split ``items`` into consecutive shards of ``size`` (the last may be shorter), in order."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"shard size must be a positive integer, got {size!r}")
    return [tuple(items[start : start + size]) for start in range(0, len(items), size)]
