"""explain_item / explain_shard as plain functions (no Prefect): failures become rows, parts commit last."""

from __future__ import annotations

import pytest

from storage import (
    LocalStore,
    ManifestItem,
    StoreCache,
    manifest_fingerprint,
    read_manifest,
    read_table,
    to_arrow,
)
from tasks import cache
from tasks.config import AuditConfig, ShardJob
from tasks.worker import explain_item, explain_shard
from tests.pipeline.conftest import local_dataset, png_bytes


def _item(tmp_path, name: str, data: bytes | None, **overrides) -> ManifestItem:
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    fields = {
        "item_id": name.replace(".", "_"),
        "image_uri": str(path),
        "question": "Where is the nodule?",
        "roi_box": None,
        "roi_mask_uri": None,
        "metadata": {},
        "row_number": 1,
    }
    return ManifestItem(**{**fields, **overrides})


@pytest.fixture
def config(model_dir, tmp_path) -> AuditConfig:
    return AuditConfig(
        manifest=str(tmp_path / "m.csv"),
        out=str(tmp_path / "out"),
        model=model_dir,
        max_new_tokens=2,
        device="cpu",
    )


@pytest.fixture
def explainer(model_dir):
    return cache.get_explainer(model_dir, "cpu")


@pytest.mark.parametrize("case", ["missing", "truncated", "unsupported", "dicom_without_pixels", "huge"])
def test_bad_images_become_error_rows(case, bad_images, tmp_path, config, explainer):
    name, data, stage, error_type = bad_images[case]
    outcome = explain_item(explainer, _item(tmp_path, name, data), config, StoreCache())
    assert not outcome.ok and outcome.tokens == []
    [error] = outcome.errors
    assert (error.stage, error.error_type) == (stage, error_type)
    assert name in error.message  # says which file
    to_arrow("answers", [outcome.answer])
    to_arrow("errors", [error.to_row()])


def test_roi_outside_the_image_is_rejected_before_the_model_runs(tmp_path, config, explainer, monkeypatch):
    monkeypatch.setattr(explainer, "explain", lambda *a, **k: pytest.fail("the model must not run"))
    item = _item(tmp_path, "a.png", png_bytes(0, (40, 32)), roi_box=(0.0, 0.0, 41.0, 10.0))
    [error] = explain_item(explainer, item, config, StoreCache()).errors
    assert (error.stage, error.error_type) == ("image", "InvalidRoiBox") and "40x32" in error.message


def test_generation_and_explanation_failures_are_staged(tmp_path, config, explainer, monkeypatch):
    empty = _item(tmp_path, "a.png", png_bytes(0), question="   ")  # only a manifest bypass gets here
    [error] = explain_item(explainer, empty, config, StoreCache()).errors
    assert (error.stage, error.error_type) == (
        "generate",
        "ValueError",
    ) and "question is empty" in error.message

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(explainer, "relevance_for_targets", out_of_memory)
    [error] = explain_item(explainer, _item(tmp_path, "b.png", png_bytes(1)), config, StoreCache()).errors
    assert (error.stage, error.error_type) == ("explain", "RuntimeError") and "out of memory" in error.message


def test_shard_continues_past_bad_items_and_commits_answers_last(
    tmp_path, model_dir, bad_images, monkeypatch
):
    manifest_path = local_dataset(tmp_path / "data", 2)
    name, data, _stage, _type = bad_images["truncated"]
    (tmp_path / "data" / name).write_bytes(data)
    with open(manifest_path, "a") as handle:
        handle.write(f"bad-1,{name},Where is the nodule?,north,\n")
    manifest = read_manifest(manifest_path)
    config = AuditConfig(
        manifest=manifest_path,
        out=str(tmp_path / "out"),
        model=model_dir,
        shard_size=3,
        max_new_tokens=2,
        device="cpu",
    )
    written: list[str] = []
    original = LocalStore.write_bytes
    monkeypatch.setattr(
        LocalStore, "write_bytes", lambda self, key, data: written.append(key) or original(self, key, data)
    )

    cache.get_explainer(model_dir, "cpu")  # loaded before: this process must not load it again
    loads = cache.model_load_count()
    summary = explain_shard(ShardJob("r1", 0, manifest_fingerprint(manifest), config))
    assert cache.model_load_count() == loads and summary["model_load_seconds"] == 0.0
    assert (summary["items"], summary["ok"], summary["failed"], summary["error_rows"]) == (3, 2, 1, 1)
    parts = [key.split("/")[0] for key in written if key.endswith(".parquet")]
    assert parts == ["tokens", "errors", "answers"]  # the answers part is the commit marker
    assert all(key.startswith("overlays/") for key in written[: summary["overlays"]])
    errors = read_table(config.out, "errors", "r1").to_pylist()
    assert [(row["item_id"], row["stage"], row["error_type"]) for row in errors] == [
        ("bad-1", "image", "CorruptImage")
    ]
    assert sorted(read_table(config.out, "answers", "r1").column("status").to_pylist()) == [
        "error",
        "ok",
        "ok",
    ]


def test_a_changed_manifest_is_refused(tmp_path, model_dir):
    manifest_path = local_dataset(tmp_path / "data", 2)
    config = AuditConfig(manifest=manifest_path, out=str(tmp_path / "out"), model=model_dir, device="cpu")
    with pytest.raises(cache.ManifestChanged, match="changed since the run was planned"):
        explain_shard(ShardJob("r1", 0, "0" * 64, config))
