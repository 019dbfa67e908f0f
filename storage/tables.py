"""Arrow schemas of the output tables (generated from the typed records of storage/records.py, or
explicit for the cohort tables), and validation of rows against them.

``docs/outputs.md`` documents every column. ``run_id`` is not a column in the files: it is the hive
partition in the path (``<table>/run_id=<id>/``) and appears as a column when a reader asks for hive
partitioning.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from storage.audit_schemas import AUDIT_SCHEMAS
from storage.errors import SchemaError
from storage.records import (
    AnswerRecord,
    ClusterRecord,
    ErrorRecord,
    FaithfulnessRecord,
    FlagRecord,
    MentionRecord,
    Record,
    TokenRecord,
    allowed_values,
    arrow_schema,
)

# 4: typed records (storage/records.py), answer-aware off_anatomy, the clusters table and cluster flags
# 5: the mentions table (and the errors stage `mentions`): later steps read answers through it
SCHEMA_VERSION = "5"
RECORDS: dict[str, type[Record]] = {
    "answers": AnswerRecord,
    "tokens": TokenRecord,
    "errors": ErrorRecord,
    "flags": FlagRecord,
    "faithfulness": FaithfulnessRecord,
    "clusters": ClusterRecord,
    "mentions": MentionRecord,
}
SCHEMAS: dict[str, pa.Schema] = {
    **{table: arrow_schema(record) for table, record in RECORDS.items()},
    **AUDIT_SCHEMAS,
}
ANSWERS_SCHEMA, TOKENS_SCHEMA, ERRORS_SCHEMA = SCHEMAS["answers"], SCHEMAS["tokens"], SCHEMAS["errors"]
FLAGS_SCHEMA, FAITHFULNESS_SCHEMA = SCHEMAS["flags"], SCHEMAS["faithfulness"]
_ALLOWED_VALUES = {
    (table, name): values
    for table, record in RECORDS.items()
    for name, values in allowed_values(record).items()
}


def code_version() -> str:
    """The installed vlm-audit version, or '0+unknown' when running from an uninstalled tree."""
    try:
        return importlib.metadata.version("vlm-audit")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def table_schema(table_name: str) -> pa.Schema:
    """The schema of ``table_name`` with schema and code versions in its key-value metadata."""
    if table_name not in SCHEMAS:
        raise SchemaError(f"unknown table {table_name!r}; allowed: {', '.join(SCHEMAS)}")
    return SCHEMAS[table_name].with_metadata(
        {
            "vlm_audit.table": table_name,
            "vlm_audit.schema_version": SCHEMA_VERSION,
            "vlm_audit.code_version": code_version(),
        }
    )


def _columns_from_rows(
    table_name: str, rows: Iterable[Mapping[str, Any] | Record]
) -> tuple[dict[str, list[Any]], int]:
    rows = [row.to_row() if isinstance(row, Record) else row for row in rows]  # a record becomes its row here
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise SchemaError(f"{table_name}: row {index} is a {type(row).__name__}, expected a mapping")
    names = dict.fromkeys(name for row in rows for name in row)
    return {name: [row.get(name) for row in rows] for name in names}, len(rows)


def _check_struct_keys(table_name: str, field: pa.Field, values: list[Any]) -> None:
    allowed = {child.name for child in field.type}
    for index, value in enumerate(values):
        if isinstance(value, Mapping) and not set(value) <= allowed:
            unknown = sorted(set(value) - allowed)
            raise SchemaError(
                f"{table_name}.{field.name}: row {index} has unknown key(s) {unknown}; allowed: {sorted(allowed)}"
            )


def to_arrow(table_name: str, data: pa.Table | Iterable[Mapping[str, Any] | Record]) -> pa.Table:
    """Validate rows (records or mappings) or a table against ``table_name``'s schema and return a conforming table.

    Missing nullable columns become nulls; unknown columns, wrong types, nulls in non-null columns and
    values outside an enumeration (status, target_kind, stage) raise ``SchemaError`` naming the column.
    """
    schema = table_schema(table_name)
    if isinstance(data, pa.Table):
        columns: dict[str, Any] = {name: data.column(name) for name in data.column_names}
        n_rows = data.num_rows
    else:
        columns, n_rows = _columns_from_rows(table_name, data)
    unknown = [name for name in columns if name not in schema.names]
    if unknown:
        hint = " (run_id is the path partition run_id=<id>/, not a column)" if "run_id" in unknown else ""
        raise SchemaError(
            f"{table_name}: unknown column(s) {unknown}{hint}; allowed: {', '.join(schema.names)}"
        )
    arrays = []
    for field in schema:
        values = columns.get(field.name)
        if values is None:
            if not field.nullable and n_rows:
                raise SchemaError(f"{table_name}.{field.name}: required column is missing")
            arrays.append(pa.nulls(n_rows, field.type))
            continue
        if isinstance(values, list) and pa.types.is_struct(field.type):
            _check_struct_keys(table_name, field, values)
        try:
            if isinstance(values, pa.ChunkedArray | pa.Array):
                array = values.cast(field.type)
            else:
                array = pa.array(values, type=field.type)
        except (
            pa.ArrowInvalid,
            pa.ArrowTypeError,
            pa.ArrowNotImplementedError,
            TypeError,
            ValueError,
        ) as exc:
            raise SchemaError(f"{table_name}.{field.name}: values do not fit {field.type} ({exc})") from exc
        if not field.nullable and array.null_count:
            first = pc.index(pc.is_null(array), True).as_py()
            raise SchemaError(f"{table_name}.{field.name}: null in a non-null column at row {first}")
        allowed = _ALLOWED_VALUES.get((table_name, field.name))
        if allowed is not None:
            present = pc.drop_null(array)  # null means "unknown", which every column allows
            bad = pc.filter(present, pc.invert(pc.is_in(present, value_set=pa.array(allowed))))
            if len(bad):
                raise SchemaError(
                    f"{table_name}.{field.name}: value {bad[0].as_py()!r} not allowed; allowed: {', '.join(allowed)}"
                )
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=schema)
