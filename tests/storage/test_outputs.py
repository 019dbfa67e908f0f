import io
import os
from importlib.metadata import version

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from storage import (
    ANSWERS_SCHEMA,
    MANIFEST_PART,
    SCHEMA_VERSION,
    ErrorRecord,
    InvalidURIError,
    ObjectNotFound,
    OutputNotWritable,
    SchemaError,
    StorageError,
    completed_shards,
    list_runs,
    open_store,
    overlay_key,
    part_key,
    read_json,
    read_run,
    read_table,
    write_json,
    write_part,
    write_run,
)
from tests.storage.rows import answer_row, token_row


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def out(request, tmp_path):
    """(output root URI, its store) on a local folder or an S3 prefix."""
    if request.param == "local":
        uri = str(tmp_path / "out")
    else:
        uri = f"{request.getfixturevalue('s3_bucket')}/audit-out"
    return uri, open_store(uri)


def test_parts_round_trip_with_hive_run_id(out):
    uri, store = out
    written = write_part(store, "answers", "r1", 0, [answer_row("a1"), answer_row("a2", status="error")])
    write_part(store, "answers", "r1", 1, [answer_row("a3")])
    write_part(store, "answers", "r2", 0, [answer_row("b1", metadata={"site": "south"})])
    assert written == store.uri("answers/run_id=r1/part-00000.parquet")
    assert store.list("answers/") == [
        "answers/run_id=r1/part-00000.parquet",
        "answers/run_id=r1/part-00001.parquet",
        "answers/run_id=r2/part-00000.parquet",
    ]
    everything = read_table(uri, "answers")
    assert sorted(zip(everything["run_id"].to_pylist(), everything["item_id"].to_pylist(), strict=True)) == [
        ("r1", "a1"),
        ("r1", "a2"),
        ("r1", "a3"),
        ("r2", "b1"),
    ]
    assert everything.schema.field("run_id").type == pa.string()
    assert everything.schema.remove(everything.schema.get_field_index("run_id")).equals(ANSWERS_SCHEMA)
    one_run = read_table(store, "answers", run_id="r2")
    assert one_run.to_pylist()[0]["metadata"] == [("site", "south")] and one_run["run_id"].to_pylist() == [
        "r2"
    ]


def test_parquet_metadata_names_versions(out):
    _, store = out
    write_part(store, "tokens", "r1", 3, [token_row()])
    metadata = pq.read_metadata(io.BytesIO(store.read_bytes("tokens/run_id=r1/part-00003.parquet"))).metadata
    assert metadata[b"vlm_audit.schema_version"] == SCHEMA_VERSION.encode() == b"5"
    assert metadata[b"vlm_audit.code_version"] == version("vlm-audit").encode()
    assert metadata[b"vlm_audit.run_id"] == b"r1" and metadata[b"vlm_audit.table"] == b"tokens"


def test_ledger_and_rerun_without_duplicates(out):
    uri, store = out
    write_part(
        store, "errors", "r1", MANIFEST_PART, [ErrorRecord(None, 4, None, "manifest", "X", "bad").to_row()]
    )
    for index in range(3):
        write_part(store, "tokens", "r1", index, [token_row(f"i{index}")])
    write_part(store, "answers", "r1", 0, [answer_row("i0")])
    write_part(store, "answers", "r1", 2, [answer_row("i2")])
    assert completed_shards(store, "r1") == {0, 2}
    assert completed_shards(store, "r2") == set()
    # the rerun redoes shard 1 under the same part names: tokens replaced, not appended
    write_part(
        store, "tokens", "r1", 1, [token_row("i1", target_kind="word"), token_row("i1", target_kind="answer")]
    )
    write_part(store, "answers", "r1", 1, [answer_row("i1")])
    assert completed_shards(store, "r1") == {0, 1, 2}
    tokens = read_table(uri, "tokens", run_id="r1")
    assert sorted(tokens["item_id"].to_pylist()) == ["i0", "i1", "i1", "i2"]
    assert read_table(uri, "errors")["row_number"].to_pylist() == [4]
    some = read_table(
        uri, "tokens", "r1", columns=["item_id"], where=ds.field("target_kind") == "answer"
    )  # only what is asked for
    assert some.column_names == ["item_id"] and some["item_id"].to_pylist() == ["i1"]
    assert read_table(uri, "tokens", "r9", columns=["item_id", "method"]).column_names == [
        "item_id",
        "method",
    ]


def test_missing_tables_read_as_empty(out):
    uri, _ = out
    empty = read_table(uri, "tokens")
    assert empty.num_rows == 0 and "run_id" in empty.column_names and "image_relevance" in empty.column_names
    assert read_table(uri, "answers", run_id="never").num_rows == 0


def test_numeric_run_id_stays_a_string(out):
    uri, store = out
    write_part(store, "answers", "20240101", 0, [answer_row()])
    assert read_table(uri, "answers")["run_id"].to_pylist() == ["20240101"]


def test_invalid_rows_write_nothing(out):
    _, store = out
    with pytest.raises(SchemaError, match=r"answers\.n_targets"):
        write_part(store, "answers", "r1", 0, [answer_row(n_targets="many")])
    assert store.list() == []


def test_local_failed_commit_leaves_no_part(tmp_path, monkeypatch):
    store = open_store(str(tmp_path))
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OutputNotWritable, match="crash"):
        write_part(store, "answers", "r1", 0, [answer_row()])
    monkeypatch.undo()
    assert store.list() == [] and completed_shards(store, "r1") == set()
    assert read_table(str(tmp_path), "answers").num_rows == 0


def test_run_json_round_trip(out):
    _, store = out
    info = {
        "run_id": "r1",
        "config": {"shard_size": 8},
        "counts": {"items": 3},
        "schema_version": SCHEMA_VERSION,
    }
    uri = write_run(store, "r1", info)
    assert uri.endswith("runs/run_id=r1/run.json")
    assert read_run(store, "r1") == info
    write_run(store, "r0", {"run_id": "r0"})
    assert list_runs(store) == ["r0", "r1"]
    with pytest.raises(StorageError, match="not plain JSON"):
        write_json(store, "x.json", {"timing": float("nan")})
    with pytest.raises(ObjectNotFound):
        read_json(store, "runs/run_id=nope/run.json")


def test_keys_are_safe():
    assert part_key("errors", "r1", MANIFEST_PART) == "errors/run_id=r1/part-manifest.parquet"
    assert overlay_key("r1", "a1", "answer") == "overlays/run_id=r1/a1/answer.png"
    sanitized = overlay_key("r1", "a1", "word:left lung/../x")
    assert sanitized.startswith("overlays/run_id=r1/a1/word_left_lung_.._x-") and sanitized.endswith(".png")
    assert overlay_key("r1", "a1", "a b") != overlay_key("r1", "a1", "a_b")
    assert overlay_key("r1", "a1", "..") != overlay_key("r1", "a1", "_")
    for bad in [("../r", "a1", "t"), ("r1", "../a", "t"), ("r1", "a/b", "t")]:
        with pytest.raises(InvalidURIError, match="unsafe in a path"):
            overlay_key(*bad)
    with pytest.raises(InvalidURIError, match="part name"):
        part_key("answers", "r1", "part-1/../../x")
    with pytest.raises(ValueError, match="non-negative"):
        part_key("answers", "r1", -1)
