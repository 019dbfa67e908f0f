"""The run ledger and retry policy as plain functions: counts, worker report, conflicts, backoff."""

from __future__ import annotations

import pytest
from prefect.states import Failed

from storage import (
    CredentialsError,
    InputNotAllowed,
    LocalStore,
    NotARegularFile,
    ObjectNotFound,
    ObjectTooLarge,
    StorageConnectionError,
    StorageError,
    parse_manifest,
    write_part,
)
from tasks import retry
from tasks.config import AuditConfig
from tasks.ledger import (
    RunConflict,
    RunContext,
    check_compatible,
    count_outputs,
    plan_run,
    run_record,
    worker_report,
)
from tasks.retry import is_transient, retry_condition, with_backoff
from tasks.shards import ShardSummary, WorkerInfo
from tests.storage.rows import answer_row, token_row

MANIFEST = parse_manifest(b"item_id,image,question\na1,a.png,Where?\na2,b.png,Where?\n", "/data/m.csv")


def _config(**overrides) -> AuditConfig:
    return AuditConfig(manifest="/data/m.csv", out="/out", model="tiny", shard_size=1, **overrides)


def test_counts_come_from_committed_shards_only(tmp_path):
    store = LocalStore(str(tmp_path))
    write_part(store, "tokens", "r", 0, [token_row("a1")])
    write_part(store, "answers", "r", 0, [answer_row("a1")])
    write_part(store, "tokens", "r", 1, [token_row("a2"), token_row("a2")])  # crashed before its answers part
    assert count_outputs(store, "r") == {
        "answered": 1,
        "ok": 1,
        "failed": 0,
        "targets": 1,
        "errors": 0,
        "shards_done": 1,
    }


CONTEXT = RunContext(dask=None, flow_run_id=None, groupings_from="settings")


def test_plan_writes_manifest_errors_and_a_running_record_and_refuses_other_settings(tmp_path):
    store = LocalStore(str(tmp_path))
    plan = plan_run(store, "r", _config(), MANIFEST, "f" * 64, RunContext(None, "x", "settings"))
    assert (plan.n_shards, plan.pending, plan.attempt) == (2, [0, 1], 1)
    assert store.exists("errors/run_id=r/part-manifest.parquet")
    write_part(store, "answers", "r", 1, [answer_row("a2")])
    again = plan_run(store, "r", _config(), MANIFEST, "f" * 64, CONTEXT)
    assert (again.pending, again.attempt) == ([0], 2)
    with pytest.raises(RunConflict, match=r"max_new_tokens=8 \(was 32\).*drop --run-id"):
        plan_run(store, "r", _config(max_new_tokens=8), MANIFEST, "f" * 64, CONTEXT)
    previous = run_record("r", _config(), MANIFEST, "f" * 64, status="running", attempt=1, started_at="t")
    with pytest.raises(RunConflict, match="manifest_fingerprint"):
        check_compatible(previous, _config(), "0" * 64, "r")


def test_a_rerun_may_not_change_what_the_run_may_read():
    allowed = _config(allowed_inputs="s3://other")
    previous = run_record("r", allowed, MANIFEST, "f" * 64, status="running", attempt=1, started_at="t")
    check_compatible(previous, allowed, "f" * 64, "r")
    with pytest.raises(RunConflict, match=r"allowed_inputs=\[\] \(was \['s3://other'\]\)"):
        check_compatible(previous, _config(), "f" * 64, "r")  # dropped back to the default
    with pytest.raises(RunConflict, match=r"allowed_inputs=\['s3://else'\]"):
        check_compatible(previous, _config(allowed_inputs="s3://else"), "f" * 64, "r")


def test_refused_and_oversized_inputs_are_not_retried():
    for error in (InputNotAllowed("x"), NotARegularFile("x"), ObjectTooLarge("x")):
        assert not is_transient(error)


def test_worker_report_counts_loads_and_concurrency():
    def summary(pid, start, end, loads=1):
        timings = dict.fromkeys(
            ("seconds", "model_load_seconds", "generate_seconds", "explain_seconds", "faithfulness_seconds"),
            0.0,
        )
        return ShardSummary(
            **dict.fromkeys(("shard", "items", "ok", "failed", "token_rows", "error_rows", "overlays"), 0),
            **timings,
            write_seconds=0.0,
            model_id="m",
            model_revision=None,
            started_at=start,
            finished_at=end,
            worker=WorkerInfo("h", pid, loads),
        )

    report = worker_report([summary(1, 0, 2), summary(1, 2, 3), summary(2, 0, 5), summary(2, 1, 2, loads=1)])
    assert report == [
        {"worker": "h:1", "shards": 2, "model_loads": 1, "max_concurrent_shards": 1},  # back to back
        {"worker": "h:2", "shards": 2, "model_loads": 1, "max_concurrent_shards": 2},
    ]


def test_only_transient_storage_errors_are_retried(monkeypatch):
    monkeypatch.setattr(retry, "BACKOFF_SECONDS", 0.0)
    assert is_transient(StorageConnectionError("endpoint down")) and is_transient(StorageError("S3 500"))
    assert not is_transient(CredentialsError("bad key")) and not is_transient(ObjectNotFound("gone"))
    assert not is_transient(ValueError("bug"))
    assert retry_condition(None, None, Failed(data=StorageConnectionError("down"))) is True
    assert retry_condition(None, None, Failed(data=CredentialsError("bad key"))) is False

    attempts = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise StorageConnectionError("connection reset")
        return "written"

    assert with_backoff(flaky) == "written" and len(attempts) == 3
    attempts.clear()

    def refused() -> None:
        attempts.append(1)
        raise CredentialsError("SignatureDoesNotMatch")

    with pytest.raises(CredentialsError):
        with_backoff(refused)
    assert len(attempts) == 1


def test_workers_cut_shards_exactly_as_storage_shard():
    from storage import manifest_fingerprint, shard
    from tasks import cache

    rows = b"".join(f"{index}.png,Where?\n".encode() for index in range(5))
    manifest = parse_manifest(b"image,question\n" + rows, "/data/five.csv")
    fingerprint = manifest_fingerprint(manifest)
    cache.remember_manifest(manifest, fingerprint)
    assert [cache.shard_items(manifest.uri, fingerprint, 2, index) for index in range(3)] == shard(
        manifest.items, 2
    )
    with pytest.raises(IndexError, match="has 3 shard"):
        cache.shard_items(manifest.uri, fingerprint, 2, 3)


def test_a_first_look_audits_the_first_items_or_a_sample_that_depends_on_the_content_alone(monkeypatch):
    from storage import manifest_fingerprint
    from tasks import cache
    from tasks.shards import select_items

    rows = b"".join(f"{index}.png,Where?\n".encode() for index in range(40))
    manifest = parse_manifest(b"image,question\n" + rows, "/data/forty.csv")
    fingerprint = manifest_fingerprint(manifest)
    assert select_items(manifest, None, None, seed=fingerprint) is manifest
    assert select_items(manifest, 3, None, seed=fingerprint).items == manifest.items[:3]
    sample = select_items(manifest, None, 10, seed=fingerprint).items
    positions = [manifest.items.index(item) for item in sample]
    assert len(sample) == 10 and positions == sorted(positions) and positions[-1] >= 20  # spread, in order
    assert select_items(manifest, None, 10, seed=fingerprint).items == sample  # the same every time
    other_seed = select_items(manifest, None, 10, seed="another manifest's fingerprint").items
    assert other_seed != sample
    # workers cut the selection into the same shards as the flow
    cache.remember_manifest(manifest, fingerprint)
    assert cache.shard_items(manifest.uri, fingerprint, 4, 2, sample=10) == sample[8:]
    assert cache.shard_items(manifest.uri, fingerprint, 4, 0, limit=3) == manifest.items[:3]
    draws = []
    monkeypatch.setattr(
        cache, "select_items", lambda *args, **kwargs: draws.append(1) or select_items(*args, **kwargs)
    )
    assert [len(cache.shard_items(manifest.uri, fingerprint, 4, index, sample=11)) for index in range(3)] == [
        4,
        4,
        3,
    ]
    assert len(draws) == 1  # the sample is drawn once per process, not once per shard
    with pytest.raises(ValueError, match="give one of them"):
        AuditConfig(manifest="m.csv", out="o", limit=3, sample=10)
