"""The output layout, atomic Parquet/JSON writers and readers, run.json and the committed shards.

```
<out>/runs/run_id=<id>/run.json
<out>/answers/run_id=<id>/part-<shard:05d>.parquet
<out>/tokens/run_id=<id>/part-<shard:05d>.parquet
<out>/errors/run_id=<id>/part-<shard:05d>.parquet     (manifest-stage errors: part-manifest.parquet)
<out>/overlays/run_id=<id>/<item_id>/<target>.png
```

A shard writes tokens and errors first and its answers part last: the answers part is the commit
marker (``completed_shards``). A rerun rewrites the unfinished shards' parts under the same names, so
no row is duplicated. Every write is atomic (``ObjectStore.write_bytes``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from storage import _s3
from storage.engines import arrow_filesystem
from storage.errors import CredentialsError, InvalidURIError, SchemaVersionError, StorageError
from storage.objects import ObjectStore, S3Store
from storage.records import Record
from storage.tables import SCHEMA_VERSION, table_schema, to_arrow
from storage.uri import join_key, join_uri, normalize_uri

MANIFEST_PART = "part-manifest"
SAFE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
_PART_PATTERN = re.compile(r"^part-[A-Za-z0-9_-]{1,64}$")
_SHARD_PART = re.compile(r"^part-(\d{5,})\.parquet$")
# how pyarrow's C++ S3 client spells refused credentials in its OSError messages
_ARROW_CREDENTIAL_CODES = (
    "ACCESS_DENIED",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "HTTP response code: 403",
)


def _safe_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or not SAFE_ID_PATTERN.match(value):
        raise InvalidURIError(
            f"{kind} {value!r} is unsafe in a path; allowed: 1-128 characters of [A-Za-z0-9._-], "
            "not starting with '.'"
        )
    return value


def part_name(shard_index: int) -> str:
    """``part-00007`` for shard 7."""
    if isinstance(shard_index, bool) or not isinstance(shard_index, int) or shard_index < 0:
        raise ValueError(f"shard index must be a non-negative integer, got {shard_index!r}")
    return f"part-{shard_index:05d}"


def part_key(table_name: str, run_id: str, part: int | str) -> str:
    """Key of one part file: ``<table>/run_id=<id>/<part>.parquet`` (``part`` = shard index or name)."""
    table_schema(table_name)  # validates the table name
    name = part_name(part) if isinstance(part, int) else part
    if not _PART_PATTERN.match(name):
        raise InvalidURIError(f"part name {name!r} must look like 'part-00007' or 'part-manifest'")
    return join_key(table_name, f"run_id={_safe_id('run_id', run_id)}", f"{name}.parquet")


def cluster_map_folder(run_id: str) -> str:
    """``cluster_maps/run_id=<id>``: the mean maps of a run's strategy clusters."""
    return join_key("cluster_maps", f"run_id={_safe_id('run_id', run_id)}")


def cluster_map_key(run_id: str, cluster: int) -> str:
    """``cluster_maps/run_id=<id>/cluster-<k>.png``: a strategy cluster's mean map."""
    return join_key(cluster_map_folder(run_id), f"cluster-{cluster:03d}.png")


def run_json_key(run_id: str, name: str = "run.json") -> str:
    """``runs/run_id=<id>/run.json`` (or another of the run's JSON documents: ``aggregate.json``)."""
    return join_key("runs", f"run_id={_safe_id('run_id', run_id)}", name)


def run_lock_key(run_id: str) -> str:
    """``runs/run_id=<id>/lock.json``: present while a process computes the run."""
    return join_key("runs", f"run_id={_safe_id('run_id', run_id)}", "lock.json")


def overlay_key(run_id: str, item_id: str, target: str) -> str:
    """``overlays/run_id=<id>/<item_id>/<target>.png``; ``target`` is made a safe file name.

    A target that had to be changed gets 8 hex chars of its hash, so 'word:a b' and 'word/a_b' differ.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", target).lstrip(".")[:100] or "_"
    if safe != target:
        safe = f"{safe}-{hashlib.sha256(target.encode()).hexdigest()[:8]}"
    return join_key(overlay_folder(run_id, item_id), f"{safe}.png")


def overlay_folder(run_id: str, item_id: str) -> str:
    """``overlays/run_id=<id>/<item_id>``: every overlay of one item."""
    return join_key("overlays", f"run_id={_safe_id('run_id', run_id)}", _safe_id("item_id", item_id))


def write_part(
    store: ObjectStore,
    table_name: str,
    run_id: str,
    part: int | str,
    records_or_table: pa.Table | Iterable[Record],
) -> str:
    """Write the table's records (or an Arrow table) as one Parquet part atomically; return its URI.

    This is where records become rows (`Record.to_row`), validated against the table's schema.

    >>> write_part(store, "answers", "r1", 0, [AnswerRecord("a1", status="ok", answer="left")])
    's3://audits/out/answers/run_id=r1/part-00000.parquet'
    """
    key = part_key(table_name, run_id, part)
    table = to_arrow(table_name, records_or_table)
    table = table.replace_schema_metadata({**table.schema.metadata, b"vlm_audit.run_id": run_id.encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    # the whole file is built in memory, then committed in one atomic write: no reader sees half a part
    return store.write_bytes(key, sink.getvalue().to_pybytes())


def completed_shards(store: ObjectStore, run_id: str) -> set[int]:
    """Shard indices whose answers part exists (the answers part is written last: it marks a shard done)."""
    prefix = f"answers/run_id={_safe_id('run_id', run_id)}/"
    done = set()
    for key in store.list(prefix):
        match = _SHARD_PART.match(key[len(prefix) :])
        if match:
            done.add(int(match.group(1)))
    return done


def _hive_schema(table_name: str) -> pa.Schema:
    return table_schema(table_name).append(pa.field("run_id", pa.string()))


def read_table(
    out: str | ObjectStore,
    table_name: str,
    run_id: str | None = None,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    columns: list[str] | None = None,
    where: ds.Expression | None = None,
) -> pa.Table:
    """Read every part of ``table_name`` under the output root (one run or all); adds a ``run_id`` column.

    ``out`` is the output root URI or its store. ``columns`` and ``where`` (a pyarrow dataset filter,
    e.g. ``ds.field("item_id").isin(ids)``) read only those columns and rows. Returns an empty table
    with the schema (those columns) if nothing exists.
    """
    if isinstance(out, S3Store):  # read with the same endpoint and region the store writes to
        endpoint_url, region = endpoint_url or out.endpoint_url, region or out.region
    out_uri = out.root if isinstance(out, ObjectStore) else normalize_uri(out)
    schema = _hive_schema(table_name)
    filesystem, base = arrow_filesystem(
        join_uri(out_uri, table_name), endpoint_url=endpoint_url, region=region
    )
    source = f"{base}/run_id={_safe_id('run_id', run_id)}" if run_id is not None else base
    partitioning = ds.partitioning(pa.schema([("run_id", pa.string())]), flavor="hive")
    try:
        dataset = ds.dataset(
            source,
            schema=schema,
            format="parquet",
            filesystem=filesystem,
            partitioning=partitioning,
            partition_base_dir=base,
        )
        for fragment in dataset.get_fragments():
            metadata = fragment.physical_schema.metadata or {}
            check_schema_version(metadata.get(b"vlm_audit.schema_version", b"").decode(), fragment.path)
        return dataset.to_table(columns=columns, filter=where)
    except FileNotFoundError:
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    except OSError as exc:  # pyarrow's S3 errors (access denied, unreachable endpoint)
        if any(code in str(exc) for code in _ARROW_CREDENTIAL_CODES):
            raise CredentialsError(
                f"S3 refused reading {table_name} parts under {out_uri} ({exc}); {_s3.CREDENTIAL_HINT}"
            ) from exc
        raise StorageError(f"cannot read {table_name} parts under {out_uri}: {exc}") from exc


def write_json(store: ObjectStore, key: str, obj: Any) -> str:
    """Write ``obj`` as indented, key-sorted JSON atomically; return its URI. NaN/inf are refused."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StorageError(f"cannot write {key}: content is not plain JSON ({exc})") from exc
    return store.write_bytes(key, (text + "\n").encode())


def read_json(store: ObjectStore, key: str) -> Any:
    """Read JSON written by ``write_json`` (``ObjectNotFound`` if absent)."""
    data = store.read_bytes(key)
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise StorageError(f"{store.uri(key)} is not valid JSON ({exc})") from exc


def write_run(store: ObjectStore, run_id: str, info: Mapping[str, Any]) -> str:
    """Write ``runs/run_id=<id>/run.json`` with this version's `schema_version`; ``info`` must not hold
    secrets (it is stored as is)."""
    return write_json(store, run_json_key(run_id), {**info, "schema_version": SCHEMA_VERSION})


def check_schema_version(found: str | None, where: str) -> None:
    """`SchemaVersionError` unless `found` is this version's `SCHEMA_VERSION`: older outputs are refused,
    not misread."""
    if found != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{where} was written with output schema version {found or 'unknown'}, and this vlm-audit reads "
            f"version {SCHEMA_VERSION} only; rerun the audit into a new output root (or read it with the "
            "vlm-audit release that wrote it)"
        )


def read_run(store: ObjectStore, run_id: str) -> dict[str, Any]:
    """Read ``runs/run_id=<id>/run.json``; `SchemaVersionError` for a run of another schema version."""
    key = run_json_key(run_id)
    run = read_json(store, key)
    check_schema_version(run.get("schema_version"), join_uri(store.root, key))
    return run


def list_runs(store: ObjectStore) -> list[str]:
    """Run ids that have a run.json, sorted."""
    pattern = re.compile(r"^runs/run_id=([^/]+)/run\.json$")
    return sorted(match.group(1) for key in store.list("runs/") if (match := pattern.match(key)))
