"""Manifest and images in a bucket, outputs written back, read with pyarrow and DuckDB: real HTTP (moto)."""

from __future__ import annotations

import json

import boto3
import pytest

from flows.audit import audit
from storage import duckdb_connect, open_store, parquet_source, read_run, read_table
from tests.pipeline.conftest import fast_config, manifest_bytes, png_bytes

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]


def test_audit_reads_and_writes_s3_over_http(s3_bucket, s3_env, model_dir):
    bucket = s3_bucket.removeprefix("s3://")
    s3 = boto3.client("s3")
    rows = []
    for index in range(3):
        s3.put_object(Bucket=bucket, Key=f"lake/images/{index}.png", Body=png_bytes(index))
        rows.append(
            {
                "item_id": f"s3-{index}",
                "image": f"images/{index}.png",
                "question": "Is there a nodule?",
                "site": "x",
            }
        )
    s3.put_object(Bucket=bucket, Key="lake/batch.jsonl", Body=manifest_bytes(rows, fmt="jsonl"))
    out = f"{s3_bucket}/audit-out"

    result = audit(
        fast_config(
            f"{s3_bucket}/lake/batch.jsonl",
            out,
            model=model_dir,
            shard_size=2,
            endpoint_url=s3_env.endpoint_url,
        )
    )
    run_id = result["run_id"]
    assert result["counts"]["ok"] == 3

    answers = read_table(out, "answers", run_id)  # pyarrow over S3, hive run_id column
    assert sorted(answers.column("item_id").to_pylist()) == ["s3-0", "s3-1", "s3-2"]
    assert set(answers.column("image_uri").to_pylist()) == {
        f"{s3_bucket}/lake/images/{i}.png" for i in range(3)
    }
    con = duckdb_connect(out)
    [(n_tokens, n_items, run_ids)] = con.sql(
        f"SELECT count(*), count(DISTINCT item_id), list(DISTINCT run_id) FROM {parquet_source(out, 'tokens')}"
    ).fetchall()
    assert n_items == 3 and n_tokens == result["counts"]["targets"] and run_ids == [run_id]
    joined = con.sql(
        f"SELECT a.metadata['site'] AS site, count(*) FROM {parquet_source(out, 'answers')} a "
        f"JOIN {parquet_source(out, 'tokens')} t USING (run_id, item_id) WHERE t.target_kind = 'answer' GROUP BY ALL"
    ).fetchall()
    assert joined == [("x", 3)]
    store = open_store(out)
    assert store.exists(f"overlays/run_id={run_id}/s3-0/answer.png")

    record = read_run(store, run_id)
    assert record["config"]["endpoint_url"] == s3_env.endpoint_url and record["status"] == "completed"
    text = json.dumps(record)
    assert s3_env.secret_access_key not in text and s3_env.access_key_id not in text
