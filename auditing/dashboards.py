"""DuckDB views for dashboards over every run under an output root (the SQL is `auditing/dashboards.sql`).

>>> import duckdb
>>> con = duckdb.connect("audit.duckdb")           # or duckdb.connect() for a notebook
>>> create_views(con, "s3://audits/out")
>>> con.sql("select * from flags_per_run order by created_at").df()

Command line (writes a DuckDB file that Grafana, Superset or Metabase can open):
``vlm-audit views <out_uri> <file.duckdb>``, or ``python -m auditing.dashboards <out_uri> <file.duckdb>``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from importlib.resources import files
from string import Template
from typing import Any

import pyarrow as pa

from auditing.rules import RULES
from storage import duckdb_connect, is_s3_uri, normalize_uri, table_schema
from vocabulary import names

__all__ = [
    "ROOT_PLACEHOLDER", "Block", "create_views", "dashboard_sql", "describe_views", "view_blocks", "write_views",
]  # fmt: skip

ROOT_PLACEHOLDER = "${OUT}"
_HEADER = re.compile(r"^-- (source|view): ([a-z_]+)\s*$", re.MULTILINE)
# columns of the `runs` source (run.json); keep in step with its block in dashboards.sql
_RUN_COUNTS = ("items", "ok", "failed", "errors", "targets", "manifest_errors", "shards", "shards_failed",
               "shards_deferred")  # fmt: skip
RUNS_COLUMNS = {
    "run_id": "VARCHAR",
    "status": "VARCHAR",
    "attempt": "BIGINT",
    "manifest": "VARCHAR",
    "model_id": "VARCHAR",
    "model_revision": "VARCHAR",
    "method": "VARCHAR",
    "group_by": "VARCHAR",
    "code_version": "VARCHAR",
    "schema_version": "VARCHAR",
    **{f"n_{count}": "BIGINT" for count in _RUN_COUNTS},
    "total_seconds": "DOUBLE",
    "duration_seconds": "DOUBLE",
    "started_at": "VARCHAR",
    "finished_at": "VARCHAR",
    "created_at": "TIMESTAMP",
    "config": "JSON",
}
_GLOB = re.compile(r"read_(?:parquet|json)\('(\$\{OUT\}[^']*)'")


@dataclass(frozen=True)
class Block:
    """One statement of dashboards.sql: a source view (one table, or run.json) or a dashboard view."""

    kind: str  # "source" or "view"
    name: str
    sql: str

    @property
    def glob(self) -> str | None:
        """The file glob a source block reads (with the root placeholder), None for other blocks."""
        match = _GLOB.search(self.sql)
        return match.group(1) if match else None


def _sql_string(value: str) -> str:
    """`value` as it may appear inside a single-quoted SQL string."""
    return value.replace("'", "''")


def _literal(value: str | None) -> str:
    return "NULL" if value is None else f"'{_sql_string(value)}'"


def rules_relation() -> str:
    """The rule registry as an SQL relation `rules(rule, title, scope, marks, metric)`, one row per rule
    name: the views join flags to the rows they mark through it, and count every known rule."""
    rows = ", ".join(
        f"({', '.join(map(_literal, (name.name, name.title, rule.scope, rule.marks, name.metric)))})"
        for rule in RULES
        for name in rule.names
    )
    return f"(VALUES {rows}) AS rules(rule, title, scope, marks, metric)"


# the names dashboards.sql writes as ${NAME}: one source, vocabulary.names and the rule registry
SQL_NAMES = {
    "ANSWER": names.ANSWER,
    "WORD": names.WORD,
    "BORDER": names.BORDER,
    "CORNERS": names.CORNERS,
    "LUNG_SHARE": " + ".join(f"t.region_shares.{zone}" for zone in names.LUNG_ZONES),
    "OCCLUSION": names.OCCLUSION,
    "PIXEL_OCCLUSION": names.PIXEL_OCCLUSION,
    "ITEM_SCOPE": names.ITEM_SCOPE,
    "COHORT_SCOPE": names.COHORT_SCOPE,
    "CLUSTER_SCOPE": names.CLUSTER_SCOPE,
    "RULES": rules_relation(),
}


def dashboard_sql() -> str:
    """The text of auditing/dashboards.sql with the shared names filled in (the root still as ``${OUT}``)."""
    text = (files("auditing") / "dashboards.sql").read_text(encoding="utf-8")
    return Template(text).safe_substitute(SQL_NAMES)


def view_blocks(sql: str | None = None) -> list[Block]:
    """The blocks of dashboards.sql in file order."""
    sql = dashboard_sql() if sql is None else sql
    headers = list(_HEADER.finditer(sql))
    blocks = []
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        body = sql[header.end() : following.start() if following else len(sql)].strip()
        blocks.append(Block(header.group(1), header.group(2), body))
    return blocks


def _has_files(con: Any, glob: str) -> bool:
    return con.execute(f"SELECT count(*) FROM glob('{_sql_string(glob)}')").fetchone()[0] > 0


def _columns(con: Any, table: str) -> dict[str, str]:
    """A source's columns and DuckDB types: the table's schema in storage and a VARCHAR run_id, or
    RUNS_COLUMNS for run.json."""
    if table == "runs":
        return RUNS_COLUMNS
    schema = table_schema(table).append(pa.field("run_id", pa.string()))
    types = con.from_arrow(schema.empty_table()).types
    return {name: str(kind) for name, kind in zip(schema.names, types, strict=True)}


def _nulls(columns: dict[str, str]) -> str:
    return ", ".join(f'CAST(NULL AS {kind}) AS "{name}"' for name, kind in columns.items())


def _empty_standin(con: Any, table: str) -> str:
    """A view without rows with the source's columns."""
    return f"CREATE OR REPLACE VIEW {table} AS SELECT {_nulls(_columns(con, table))} WHERE false"


def _with_missing_columns(con: Any, table: str, sql: str) -> str | None:
    """`sql` (a source block) with the columns of the current schema that no part has yet added as NULL,
    so views over a root written by older versions still bind; None when nothing is missing."""
    present = {row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()}
    missing = {name: kind for name, kind in _columns(con, table).items() if name not in present}
    if not missing:
        return None
    return sql.replace("SELECT * FROM", f"SELECT *, {_nulls(missing)} FROM", 1)


def create_views(con: Any, out_uri: str, *, endpoint_url: str | None = None) -> dict[str, str]:
    """Create the dashboard views of dashboards.sql on `con` over every run under `out_uri`.

    Source views (one per table, plus `runs` from run.json) read the files by glob with hive
    partitioning; a table with no files yet gets a view without rows and with the table's columns, and
    a column that no part has yet (all written by an older version) reads as NULL, so the dashboard
    views still work (rerun `create_views` once the files exist). s3:// roots are read
    through `storage.duckdb_connect` (httpfs, or pyarrow's S3 client where httpfs is unavailable).

    Returns {view: "files" | "empty" | "view"}: how each view was created.
    """
    root = normalize_uri(out_uri).rstrip("/")
    if not (is_s3_uri(root) and "s3" in con.list_filesystems()):
        # a connection from storage.duckdb_connect may already read s3:// through fsspec, which
        # cannot be registered twice
        duckdb_connect(root, endpoint_url=endpoint_url, connection=con)
    created: dict[str, str] = {}
    for block in view_blocks():
        sql = block.sql.replace(ROOT_PLACEHOLDER, _sql_string(root))
        if block.kind == "source":
            glob = block.glob.replace(ROOT_PLACEHOLDER, root) if block.glob else None
            if glob is None or _has_files(con, glob):
                con.execute(sql)
                if widened := _with_missing_columns(con, block.name, sql):
                    con.execute(widened)
                created[block.name] = "files"
            else:
                con.execute(_empty_standin(con, block.name))
                created[block.name] = "empty"
        else:
            con.execute(sql)
            created[block.name] = "view"
    return created


_HOW = {"files": "reads files", "empty": "empty stand-in (no files yet)", "view": "dashboard view"}


def write_views(out_uri: str, database: str, *, endpoint_url: str | None = None) -> dict[str, str]:
    """Create or refresh the views over every run under `out_uri` in the DuckDB file `database` (created
    if missing), for dashboard tools to open; returns `create_views`' {view: how}."""
    import duckdb

    with duckdb.connect(database) as con:
        return create_views(con, out_uri, endpoint_url=endpoint_url)


def describe_views(created: dict[str, str]) -> str:
    """One line per view: its name and whether it reads files, is an empty stand-in or a dashboard view."""
    width = max(map(len, created), default=0)
    return "\n".join(f"{name:<{width}}  {_HOW[how]}" for name, how in created.items())


def main(argv: list[str] | None = None) -> int:
    """``python -m auditing.dashboards OUT_URI DATABASE``: as ``vlm-audit views``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m auditing.dashboards OUT_URI DATABASE.duckdb", file=sys.stderr)
        return 2
    print(describe_views(write_views(*args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
