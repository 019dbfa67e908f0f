"""The audit flow on a local store under the test Prefect server: outputs, run.json, resume, conflicts."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
from PIL import Image

from flows.audit import audit
from storage import SCHEMA_VERSION, completed_shards, open_store, read_run, read_table
from tasks.ledger import RunConflict
from tests.pipeline.conftest import fast_config, local_dataset

pytestmark = pytest.mark.usefixtures("prefect_server")


def _part_mtimes(out: str, run_id: str) -> dict[str, int]:
    folder = os.path.join(out, "answers", f"run_id={run_id}")
    return {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)}


def test_local_run_writes_every_table_and_resumes_without_duplicates(tmp_path, model_dir):
    manifest = local_dataset(tmp_path / "data", 5)
    out = str(tmp_path / "out")
    first = audit(fast_config(manifest, out, model=model_dir, shard_size=2))
    run_id = first.run_id
    assert first.counts["shards"] == 3 and first.counts["shards_skipped"] == 0

    answers = read_table(out, "answers", run_id).to_pandas()
    assert sorted(answers.item_id) == [f"item-{i:03d}" for i in range(5)]
    assert set(answers.status) == {"ok"} and answers.metadata.map(dict).map(lambda m: m["site"]).notna().all()
    tokens = read_table(out, "tokens", run_id).to_pandas()
    assert set(tokens.target_kind) >= {"answer"} and (tokens.grid_h == 4).all()
    assert not tokens.duplicated(
        ["item_id", "target_kind", "target_text", "token_position", "image_index"]
    ).any()
    with_roi = tokens[tokens.item_id.isin(["item-000", "item-003"]) & (tokens.target_kind == "answer")]
    assert with_roi.roi_share.notna().all() and tokens[tokens.item_id == "item-001"].roi_share.isna().all()
    overlays = sorted(os.listdir(os.path.join(out, "overlays", f"run_id={run_id}")))
    assert overlays == [f"item-{i:03d}" for i in range(5)]
    overlay = os.path.join(out, "overlays", f"run_id={run_id}", "item-000", "answer.png")
    original = answers.set_index("item_id").loc["item-000", "image_uri"]
    with Image.open(overlay) as stored, Image.open(original) as image:
        assert stored.size == image.size  # no caption band or text: the corners show what the image has

    record = read_run(open_store(out), run_id)
    assert record["status"] == "completed" and record["schema_version"] == SCHEMA_VERSION
    assert record["counts"]["ok"] == 5 and record["counts"]["targets"] == len(tokens)
    assert record["model_revision"].startswith("sha256:")  # a local folder's checksum
    timings = record["timings"]  # wall-clock parts of the total; one shard at a time, so the stages fit
    parts = ("before_shards_seconds", "shards_wall_seconds", "after_shards_seconds")
    assert 0 < sum(timings[part] for part in parts) <= timings["total_seconds"] + 0.002
    assert timings["shard_seconds"] <= timings["shards_wall_seconds"] + 0.01 and timings["workers"] == 1
    metadata = pq.read_schema(os.path.join(out, "answers", f"run_id={run_id}", "part-00000.parquet")).metadata
    assert metadata[b"vlm_audit.run_id"] == run_id.encode()

    before = _part_mtimes(out, run_id)
    second = audit(fast_config(manifest, out, model=model_dir, shard_size=2))
    assert second.run_id == run_id  # derived from manifest content + settings
    assert second.counts["shards_skipped"] == 3 and second.counts["ok"] == 5
    assert _part_mtimes(out, run_id) == before  # nothing recomputed or rewritten
    assert read_table(out, "answers", run_id).num_rows == 5
    assert read_run(open_store(out), run_id)["attempt"] == 2


def test_rerun_redoes_only_uncommitted_shards(tmp_path, model_dir):
    manifest = local_dataset(tmp_path / "data", 4)
    out = str(tmp_path / "out")
    run_id = audit(fast_config(manifest, out, model=model_dir, shard_size=2), run_id="partial").run_id
    store = open_store(out)
    store.delete("answers/run_id=partial/part-00001.parquet")  # as if killed before shard 1 committed
    assert completed_shards(store, run_id) == {0}
    before = _part_mtimes(out, run_id)
    result = audit(fast_config(manifest, out, model=model_dir, shard_size=2), run_id="partial")
    assert result.counts["shards_skipped"] == 1 and result.counts["shards_done"] == 2
    assert _part_mtimes(out, run_id)["part-00000.parquet"] == before["part-00000.parquet"]
    answers = read_table(out, "answers", run_id).to_pandas()
    assert sorted(answers.item_id) == [f"item-{i:03d}" for i in range(4)]
    tokens = read_table(out, "tokens", run_id).to_pandas()
    assert not tokens.duplicated(
        ["item_id", "target_kind", "target_text", "token_position", "image_index"]
    ).any()


def test_rerun_with_other_settings_is_refused(tmp_path, model_dir):
    manifest = local_dataset(tmp_path / "data", 2)
    out = str(tmp_path / "out")
    audit(fast_config(manifest, out, model=model_dir, shard_size=2), run_id="fixed")
    with pytest.raises(RunConflict, match=r"shard_size=1 \(was 2\)"):
        audit(fast_config(manifest, out, model=model_dir, shard_size=1), run_id="fixed")


def test_recorded_timings_split_the_total_into_wall_clock_parts():
    from tasks.run_summary import attempt_timings
    from tasks.shards import ShardSummary, WorkerInfo

    def shard(index: int, start: float, end: float, pid: int) -> ShardSummary:
        return ShardSummary(
            **dict.fromkeys(("shard", "ok", "failed", "token_rows", "error_rows", "overlays"), index),
            items=2,
            model_id="m",
            model_revision=None,
            seconds=end - start,
            model_load_seconds=0.5 if index == 0 else 0.0,
            generate_seconds=1.0,
            explain_seconds=2.0,
            faithfulness_seconds=0.5,
            write_seconds=0.25,
            started_at=start,
            finished_at=end,
            worker=WorkerInfo("h", pid, 1),
        )

    # the flow started at 100 and calls attempt_timings at 120: shards ran 104-110 and 110-117, one worker
    timings = attempt_timings([shard(0, 104.0, 110.0, 1), shard(1, 110.0, 117.0, 1)], 20.0, now=120.0)
    assert (
        timings["before_shards_seconds"],
        timings["shards_wall_seconds"],
        timings["after_shards_seconds"],
    ) == (
        4.0,
        13.0,
        3.0,
    )
    assert timings["workers"] == 1 and timings["shard_seconds"] == 13.0 and timings["explain_seconds"] == 4.0
    assert timings["faithfulness_seconds"] == 1.0  # the sample's checks: a stage of their own
    # two workers in parallel, one with a clock 30 s ahead: the parts never exceed the total
    skewed = attempt_timings([shard(0, 104.0, 110.0, 1), shard(1, 135.0, 147.0, 2)], 20.0, now=120.0)
    parts = skewed["before_shards_seconds"] + skewed["shards_wall_seconds"] + skewed["after_shards_seconds"]
    assert skewed["workers"] == 2 and parts <= 20.0
    assert "shards_wall_seconds" not in attempt_timings(
        [], 3.0, now=120.0
    )  # nothing ran: all of it is unattributed
