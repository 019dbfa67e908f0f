"""Hand the same store to pyarrow and DuckDB, which do not read AWS configuration the way boto3 does.

pyarrow's ``S3FileSystem`` ignores ``AWS_ENDPOINT_URL``; DuckDB's httpfs reads none of it. Both get the
endpoint, region and credentials that boto3 resolved (``_s3.resolve_settings``), so every reader of a
run sees the same bucket.
"""

from __future__ import annotations

from typing import Any

import pyarrow.fs as pafs

from storage import _s3
from storage.errors import DuckDBExtensionError, StorageError
from storage.uri import is_s3_uri, join_uri, normalize_uri, parse_uri


def arrow_filesystem(
    uri: str, *, endpoint_url: str | None = None, region: str | None = None
) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for ``uri``, ready for ``pyarrow.dataset.dataset(path, filesystem=...)``.

    >>> fs, path = arrow_filesystem("s3://audits/out/tokens")   # path == "audits/out/tokens"
    """
    parsed = parse_uri(uri)
    if parsed.scheme != "s3":
        return pafs.LocalFileSystem(), parsed.path
    settings = _s3.resolve_settings(endpoint_url, region)
    filesystem = pafs.S3FileSystem(
        access_key=settings.access_key_id,
        secret_key=settings.secret_access_key,
        session_token=settings.session_token,
        region=settings.region,
        endpoint_override=settings.endpoint_host,
        scheme=settings.endpoint_scheme,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=5),
    )
    return filesystem, f"{parsed.bucket}/{parsed.path}".rstrip("/")


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def duckdb_s3_secret_sql(settings: _s3.S3Settings, name: str = "vlm_audit_s3") -> str:
    """The ``CREATE SECRET`` statement that points DuckDB's httpfs at the resolved endpoint.

    A secret rather than ``SET s3_secret_access_key=...``: DuckDB redacts secrets in ``duckdb_secrets()``,
    while plain settings can be read back with ``current_setting``. TEMPORARY: never persisted to disk.
    """
    options = [
        "TYPE s3",
        f"KEY_ID {_sql_literal(settings.access_key_id)}",
        f"SECRET {_sql_literal(settings.secret_access_key)}",
        f"REGION {_sql_literal(settings.region)}",
    ]
    if settings.session_token:
        options.append(f"SESSION_TOKEN {_sql_literal(settings.session_token)}")
    if settings.endpoint_host:
        options += [
            f"ENDPOINT {_sql_literal(settings.endpoint_host)}",
            "URL_STYLE 'path'",  # custom endpoints (MinIO, moto, Ceph) are addressed by path
            f"USE_SSL {'true' if settings.endpoint_scheme == 'https' else 'false'}",
        ]
    return f"CREATE OR REPLACE TEMPORARY SECRET {name} ({', '.join(options)})"


_HTTPFS_UNAVAILABLE: list[str] = []  # the reason, once an install attempt failed in this process


def load_httpfs(connection: Any) -> None:
    """Load DuckDB's httpfs extension (installing it if the extension repository is reachable).

    A failed download is remembered for the process: offline, each attempt costs seconds.
    """
    import duckdb  # storage's other modules do not need DuckDB; only readers that ask for it pay

    try:
        connection.load_extension("httpfs")
        return
    except duckdb.Error:
        pass
    if _HTTPFS_UNAVAILABLE:
        raise DuckDBExtensionError(_HTTPFS_UNAVAILABLE[0])
    try:
        connection.install_extension("httpfs")
        connection.load_extension("httpfs")
    except duckdb.Error as exc:
        reason = str(exc).strip().splitlines()[0]
        _HTTPFS_UNAVAILABLE.append(
            f"DuckDB {duckdb.__version__} cannot load the httpfs extension needed for s3:// URIs ({reason}); "
            "run INSTALL httpfs where extensions.duckdb.org is reachable, copy httpfs.duckdb_extension into "
            "~/.duckdb/extensions/<version>/<platform>/, or query a local copy of the outputs"
        )
        raise DuckDBExtensionError(_HTTPFS_UNAVAILABLE[0]) from None


def _register_arrow_s3(connection: Any, endpoint_url: str | None, region: str | None) -> None:
    """Let DuckDB read s3:// through fsspec over pyarrow's S3 client (no httpfs needed)."""
    from fsspec.implementations.arrow import ArrowFSWrapper

    class ArrowS3(ArrowFSWrapper):
        protocol = "s3"

    if connection.filesystem_is_registered("s3"):
        return

    filesystem, _ = arrow_filesystem("s3://any", endpoint_url=endpoint_url, region=region)
    connection.register_filesystem(ArrowS3(filesystem))


def duckdb_connect(
    uri: str | None = None,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    connection: Any = None,
) -> Any:
    """A DuckDB connection that can read ``uri`` (local: plain connection; s3://: httpfs + S3 secret).

    Where the httpfs extension cannot be installed (no route to extensions.duckdb.org), s3:// is
    served through fsspec over pyarrow's S3 client instead: slower, same results, same endpoint.

    >>> con = duckdb_connect("s3://audits/out")
    >>> con.sql(f"select count(*) from {parquet_source('s3://audits/out', 'answers')}")
    """
    import duckdb

    con = connection if connection is not None else duckdb.connect()
    if uri is None or not is_s3_uri(uri):
        return con
    try:
        load_httpfs(con)
    except DuckDBExtensionError:
        _register_arrow_s3(con, endpoint_url, region)
        return con
    settings = _s3.resolve_settings(endpoint_url, region)
    try:
        con.execute(duckdb_s3_secret_sql(settings))
    except duckdb.Error as exc:
        # the statement holds the secret and DuckDB may echo it: report the type only, drop the chain
        raise StorageError(
            f"DuckDB refused the S3 settings for endpoint {settings.endpoint_url or 'AWS'} "
            f"({type(exc).__name__}); check the DuckDB httpfs version"
        ) from None
    return con


def table_glob(out_uri: str, table_name: str, run_id: str | None = None) -> str:
    """Glob of a table's part files: ``<out>/<table>/**/*.parquet`` (one run: ``run_id=<id>/*.parquet``)."""
    root = normalize_uri(out_uri)
    if run_id is not None:
        return join_uri(root, table_name, f"run_id={run_id}") + "/*.parquet"
    return join_uri(root, table_name) + "/**/*.parquet"


def parquet_source(out_uri: str, table_name: str, run_id: str | None = None) -> str:
    """SQL table expression reading a table by glob, with ``run_id`` from the path as VARCHAR.

    ``hive_types`` keeps run ids such as ``20240101`` from being inferred as integers.
    """
    glob = _sql_literal(table_glob(out_uri, table_name, run_id))
    return f"read_parquet({glob}, hive_partitioning = true, hive_types = {{'run_id': VARCHAR}})"
