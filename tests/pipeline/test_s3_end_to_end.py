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
    run_id = result.run_id
    assert result.counts["ok"] == 3

    answers = read_table(out, "answers", run_id)  # pyarrow over S3, hive run_id column
    assert sorted(answers.column("item_id").to_pylist()) == ["s3-0", "s3-1", "s3-2"]
    assert set(answers.column("image_uri").to_pylist()) == {
        f"{s3_bucket}/lake/images/{i}.png" for i in range(3)
    }
    con = duckdb_connect(out)
    [(n_tokens, n_items, run_ids)] = con.sql(
        f"SELECT count(*), count(DISTINCT item_id), list(DISTINCT run_id) FROM {parquet_source(out, 'tokens')}"
    ).fetchall()
    assert n_items == 3 and n_tokens == result.counts["targets"] and run_ids == [run_id]
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


def test_an_s3_manifest_reads_only_its_bucket_and_allowed_prefixes(s3_bucket, s3_env, model_dir, tmp_path):
    """Local files and other buckets are refused (same words whether a file exists), unless allowed."""
    bucket = s3_bucket.removeprefix("s3://")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=f"{bucket}-other")
    s3.put_object(Bucket=f"{bucket}-other", Key="x.png", Body=png_bytes(3))
    s3.put_object(Bucket=bucket, Key="lake/images/own.png", Body=png_bytes(0))
    s3.put_object(Bucket=bucket, Key="lake/images/big.png", Body=png_bytes(4, (400, 400)))
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "b.png").write_bytes(png_bytes(1))
    (tmp_path / "secret.png").write_bytes(png_bytes(2))
    images = {
        "own": "images/own.png",
        "allowed": str(tmp_path / "allowed" / "b.png"),
        "local": str(tmp_path / "secret.png"),
        "local-missing": str(tmp_path / "missing.png"),
        "file-uri": f"file://{tmp_path}/secret.png",
        "other-bucket": f"s3://{bucket}-other/x.png",
        "big": "images/big.png",
    }
    rows = [
        {"item_id": item, "image": image, "question": "Is there a nodule?"} for item, image in images.items()
    ]
    s3.put_object(Bucket=bucket, Key="lake/batch.csv", Body=manifest_bytes(rows))
    out = f"{s3_bucket}/audit-out"

    result = audit(
        fast_config(
            f"{s3_bucket}/lake/batch.csv",
            out,
            model=model_dir,
            endpoint_url=s3_env.endpoint_url,
            allowed_inputs=str(tmp_path / "allowed"),
            max_image_bytes=100_000,
        )
    )

    run_id = result.run_id
    assert (result.counts["ok"], result.counts["failed"]) == (2, 5)
    errors = {row["item_id"]: row for row in read_table(out, "errors", run_id).to_pylist()}
    assert {item: (row["stage"], row["error_type"]) for item, row in errors.items()} == {
        "local": ("image", "InputNotAllowed"),
        "local-missing": ("image", "InputNotAllowed"),
        "file-uri": ("image", "InputNotAllowed"),
        "other-bucket": ("image", "InputNotAllowed"),
        "big": ("image", "ObjectTooLarge"),
    }
    existing, missing = errors["local"]["message"], errors["local-missing"]["message"]
    assert existing.replace("secret.png", "X") == missing.replace("missing.png", "X")  # no existence oracle
    assert f"outside the manifest's store {s3_bucket} (links followed)" in existing
    assert f"allowed_inputs ({tmp_path / 'allowed'})" in existing
    assert "raise max_image_bytes" in errors["big"]["message"]
    overlays = open_store(out).list(f"overlays/run_id={run_id}/")
    assert sorted({key.split("/")[2] for key in overlays}) == ["allowed", "own"]  # nothing else uploaded
