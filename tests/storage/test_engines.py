"""pyarrow and DuckDB read what the writers wrote, locally and from S3, by prefix and by glob."""

import functools
import re
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import pytest

from storage import (
    DuckDBExtensionError,
    arrow_filesystem,
    duckdb_connect,
    load_httpfs,
    open_store,
    parquet_source,
    table_glob,
    write_part,
)
from tests.storage.rows import answer_row, token_row

DOCS = Path(__file__).resolve().parents[2] / "docs" / "outputs.md"
DOCS_ROOT = "s3://my-bucket/audit-out"  # the output root the documented query names


@functools.cache
def httpfs_missing() -> str | None:
    """Why DuckDB's httpfs cannot be loaded here (None when it can); asked once, only by tests that need it."""
    try:
        load_httpfs(duckdb.connect())
    except DuckDBExtensionError as exc:
        return str(exc)
    return None


def _write_small_run(store, run_id: str = "r1") -> None:
    """Three items over two sites; answer-level image shares 0.2, 0.4 (north) and 0.9 (south)."""
    items = [("a1", "north", 0.2, True), ("a2", "north", 0.4, False), ("a3", "south", 0.9, True)]
    tokens = []
    for item_id, _site, share, hit in items:
        tokens.append(token_row(item_id, target_kind="answer", image_share=share, roi_hit=hit))
        tokens.append(token_row(item_id, target_kind="token", image_share=0.0, roi_hit=False))
    write_part(store, "tokens", run_id, 0, tokens)
    write_part(store, "answers", run_id, 0, [answer_row(i, metadata={"site": s}) for i, s, _, _ in items])
    write_part(store, "answers", run_id, 1, [answer_row("x9", status="error", metadata={"site": "north"})])


def _documented_query() -> str:
    text = DOCS.read_text()
    match = re.search(r"<!-- tested-query -->\s*```sql\n(.*?)```", text, re.DOTALL)
    assert match, "docs/outputs.md lost its tested DuckDB query"
    return match.group(1)


def test_duckdb_reads_local_outputs_by_glob(tmp_path):
    out = str(tmp_path / "out")
    _write_small_run(open_store(out))
    con = duckdb_connect(out)
    glob = f"{out}/tokens/**/*.parquet"
    assert table_glob(out, "tokens") == glob
    rows = con.execute(
        "select run_id, count(*) from read_parquet(?, hive_partitioning = true) group by run_id", [glob]
    ).fetchall()
    assert rows == [("r1", 6)]
    site = con.sql(f"select metadata['site'] from {parquet_source(out, 'answers')} where item_id = 'a3'")
    assert site.fetchall() == [("south",)] and site.types == ["VARCHAR"]


def test_documented_query_runs_and_groups_by_site(tmp_path):
    out = str(tmp_path / "out")
    _write_small_run(open_store(out))
    result = duckdb.connect().sql(_documented_query().replace(DOCS_ROOT, out))
    rows = [tuple(round(v, 4) if isinstance(v, float) else v for v in row) for row in result.fetchall()]
    assert result.columns[:3] == ["run_id", "site", "n_items"]
    assert rows == [("r1", "north", 2, 0.3, 0.25, 0.5), ("r1", "south", 1, 0.9, 0.25, 1.0)]


@pytest.mark.integration
def test_pyarrow_dataset_by_prefix_on_s3(s3_bucket):
    out = f"{s3_bucket}/audit-out"
    _write_small_run(open_store(out))
    filesystem, path = arrow_filesystem(f"{out}/answers")  # endpoint from AWS_ENDPOINT_URL, as boto3 saw it
    assert path == f"{s3_bucket.removeprefix('s3://')}/audit-out/answers"
    table = ds.dataset(path, filesystem=filesystem, format="parquet", partitioning="hive").to_table()
    assert sorted(table["item_id"].to_pylist()) == ["a1", "a2", "a3", "x9"]
    assert set(table["run_id"].to_pylist()) == {"r1"}


@pytest.mark.integration
def test_load_httpfs_without_the_extension_says_how_to_get_it():
    if httpfs_missing() is None:
        pytest.skip("httpfs loads here, so the missing-extension error cannot occur")
    import duckdb

    with pytest.raises(DuckDBExtensionError, match="httpfs extension needed for s3:// URIs"):
        load_httpfs(duckdb.connect())


@pytest.mark.integration
def test_duckdb_reads_s3_outputs_by_glob(s3_bucket):
    # through httpfs where it installs, else through fsspec over pyarrow's S3 client: real HTTP either way
    out = f"{s3_bucket}/audit-out"
    _write_small_run(open_store(out))
    con = duckdb_connect(out)
    rows = con.sql(f"select run_id, count(*) from {parquet_source(out, 'tokens')} group by run_id").fetchall()
    assert rows == [("r1", 6)]
    assert con.sql(_documented_query().replace(DOCS_ROOT, out)).fetchall()[0][:3] == ("r1", "north", 2)
