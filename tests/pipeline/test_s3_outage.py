"""An S3 outage while images are read: moto's server on 127.0.0.1 is stopped and restarted mid-run.

Items whose reads fail for the environment are never committed as final error rows: a short outage is
absorbed by the retries inside the run, a long one leaves the shard uncommitted and a rerun after it
completes every item.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import boto3
import pytest

from flows.audit import ShardsFailed, audit
from storage import StorageConnectionError, StoreCache, read_table
from tasks import retry, steps
from tests.pipeline.conftest import fast_config, manifest_bytes, png_bytes
from tests.s3_fixtures import S3Server, _free_port

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]


class Outage:
    """A moto server of its own (the session's shared one keeps running), stopped and started at will."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        port = _free_port()
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        self.up = True

    def stop(self) -> None:
        self._server.stop()
        self.up = False

    def start(self) -> None:
        self._server.start()
        self.up = True


@pytest.fixture
def outage(s3_env: S3Server) -> Iterator[Outage]:
    server = Outage()
    yield server
    if server.up:
        server.stop()


def _lake(tmp_path, outage: Outage, n: int):
    """`n` PNGs in a bucket of the outage server, and a local manifest naming them (allowed_inputs)."""
    bucket = "lake-outage"
    s3 = boto3.client("s3", endpoint_url=outage.endpoint_url)
    s3.create_bucket(Bucket=bucket)
    rows = []
    for index in range(n):
        s3.put_object(Bucket=bucket, Key=f"cxr/{index}.png", Body=png_bytes(index))
        rows.append(
            {
                "item_id": f"i{index}",
                "image": f"s3://{bucket}/cxr/{index}.png",
                "question": "Is there a nodule?",
            }
        )
    manifest = tmp_path / "batch.csv"
    manifest.write_bytes(manifest_bytes(rows))
    return str(manifest), f"s3://{bucket}"


def _config(manifest: str, out, outage: Outage, bucket: str, model_dir: str):
    return fast_config(
        manifest,
        out,
        model=model_dir,
        shard_size=2,
        endpoint_url=outage.endpoint_url,
        allowed_inputs=bucket,
        overlays="none",
    )


def test_a_short_outage_is_absorbed_by_the_retries_inside_the_run(tmp_path, outage, model_dir, monkeypatch):
    manifest, bucket = _lake(tmp_path, outage, 4)
    config = _config(manifest, tmp_path / "out", outage, bucket, model_dir)
    # botocore's own retries alone often outlast 3 s; with one attempt each, the item-level backoff
    # (1, 2, 4 s with jitter) is what must carry the reads over the outage
    monkeypatch.setattr("storage._s3._RETRIES", {"mode": "standard", "max_attempts": 1})
    read, failures, went_down = StoreCache.read_uri, [], threading.Event()

    def observed_read(self, uri: str, **options) -> bytes:
        if not went_down.is_set():  # the first image read: the server is down for 3 s from here
            went_down.set()
            outage.stop()
            threading.Timer(3.0, outage.start).start()
        try:
            return read(self, uri, **options)
        except StorageConnectionError as exc:
            failures.append(exc)
            raise

    monkeypatch.setattr(StoreCache, "read_uri", observed_read)
    result = audit(config)
    assert len(failures) >= 2 and outage.up  # reads failed during the outage and were retried
    assert result.counts["ok"] == 4 and result.counts["errors"] == 0
    assert result.counts["shards_failed"] == result.counts["shards_deferred"] == 0


def test_a_long_outage_commits_nothing_and_the_rerun_after_it_completes(
    tmp_path, outage, model_dir, monkeypatch
):
    manifest, bucket = _lake(tmp_path, outage, 4)
    out = tmp_path / "out"
    config = _config(manifest, out, outage, bucket, model_dir)
    # the outage outlasts every retry; waiting them out for real would take minutes
    monkeypatch.setattr(retry, "BACKOFF_SECONDS", 0.0)
    monkeypatch.setattr("storage._s3._RETRIES", {"mode": "standard", "max_attempts": 1})
    monkeypatch.setattr(
        steps, "explain_shard_task", steps.explain_shard_task.with_options(retry_delay_seconds=0)
    )
    outage.stop()
    with pytest.raises(ShardsFailed, match="ItemDeferred"):
        audit(config)
    [run_folder] = (out / "runs").iterdir()
    record = json.loads((run_folder / "run.json").read_text())
    assert record["status"] == "failed"
    assert record["counts"]["shards_failed"] == record["counts"]["shards_deferred"] == 2
    assert (record["counts"]["ok"], record["counts"]["failed"], record["counts"]["errors"]) == (0, 0, 0)
    assert not (out / "answers").exists()  # no StorageConnectionError was committed as an answer

    outage.start()
    result = audit(config)  # the rerun after the outage: the same run id, every item now read
    assert result.run_id == record["run_id"]
    assert result.counts["ok"] == 4 and result.counts["errors"] == 0
    answers = read_table(str(out), "answers", run_id=result.run_id)
    assert sorted(answers.column("item_id").to_pylist()) == ["i0", "i1", "i2", "i3"]
    rerun = json.loads((run_folder / "run.json").read_text())
    assert (rerun["status"], rerun["attempt"]) == ("completed", 2)
