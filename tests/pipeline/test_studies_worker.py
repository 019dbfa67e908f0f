"""Study items through the worker: a CT series and a labelled prior/current pair become one prompt
each, with per-image provenance, study shares, slice overlays and a profile strip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from storage import manifest_fingerprint, read_manifest, read_table
from tasks.config import AuditConfig
from tasks.shards import ShardJob
from tasks.worker import explain_shard
from tests.pipeline.conftest import png_bytes


def _study_manifest(folder, make_series) -> str:
    """A 12-slice CT series folder (a bright blob on slices 7-8) and a prior/current PNG pair."""
    volume = np.full((12, 16, 16), -1000, dtype=np.int16)  # air, stored as HU (no rescale)
    volume[:, 3:13, 3:13] = 40  # soft tissue
    volume[7:9, 6:10, 6:10] = 300
    series = folder / "ct-001"
    series.mkdir(parents=True)
    for name, data in make_series(volume):
        (series / name).write_bytes(data)
    (folder / "prior.png").write_bytes(png_bytes(1))
    (folder / "current.png").write_bytes(png_bytes(2))
    rows = [
        {"item_id": "ct-001", "image": "ct-001/", "question": "Is there a nodule?", "image_labels": ""},
        {
            "item_id": "pair-001",
            "image": json.dumps(["prior.png", "current.png"]),
            "question": "Has the nodule grown since the prior?",
            "image_labels": json.dumps(["prior", "current"]),
        },
    ]
    path = folder / "studies.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_study_items_are_one_prompt_each_with_provenance_shares_and_slice_overlays(
    tmp_path, model_dir, make_series
):
    manifest_path = _study_manifest(tmp_path / "data", make_series)
    out = tmp_path / "out"
    config = AuditConfig(
        manifest=manifest_path, out=str(out), model=model_dir, max_new_tokens=3, slices_per_volume=6
    )
    manifest = read_manifest(manifest_path)
    assert not manifest.errors
    summary = explain_shard(ShardJob("r1", 0, manifest_fingerprint(manifest), config))
    assert (summary.ok, summary.failed) == (2, 0), read_table(str(out), "errors", run_id="r1").to_pylist()

    answers = read_table(str(out), "answers", run_id="r1").to_pandas().set_index("item_id")
    assert answers.loc["ct-001", "n_images"] == 6 and list(answers.loc["pair-001", "image_labels"]) == [
        "prior",
        "current",
    ]
    assert len(answers.loc["pair-001", "image_uris"]) == 2

    tokens = read_table(str(out), "tokens", run_id="r1").to_pandas()
    answer_rows = tokens[tokens["target_kind"] == "answer"]
    volume = answer_rows[answer_rows["item_id"] == "ct-001"].sort_values("image_index")
    assert list(volume["slice_index"]) == [0, 2, 4, 7, 9, 11] and set(volume["n_slices"]) == {12}
    assert list(volume["image_label"]) == [f"slice {k + 1} of 12" for k in (0, 2, 4, 7, 9, 11)]
    assert set(volume["image_group"]) == {0} and volume["outside_body_share"].between(0, 1).all()
    # soft tissue fills 10 × 10 of the 16 × 16 pixels: 61% of each slice is outside the body
    assert volume["outside_body_cells"].between(0.5, 0.7).all()
    pair = answer_rows[answer_rows["item_id"] == "pair-001"].sort_values("image_index")
    assert list(pair["image_label"]) == ["prior", "current"] and list(pair["image_group"]) == [0, 1]
    assert pair["slice_index"].isna().all() and pair["outside_body_share"].isna().all()
    assert pair["outside_body_cells"].isna().all()
    for rows in (volume, pair):
        assert abs(rows["study_share"].sum() - 1) < 1e-5  # the images' shares of one target's relevance

    overlays = sorted(p.name for p in (out / "overlays" / "run_id=r1" / "ct-001").iterdir())
    top = volume.nlargest(3, "study_share")["slice_index"].astype(int)
    assert overlays == sorted(["answer-profile.png", *(f"answer-slice{k + 1:03d}.png" for k in top)])
    assert sorted(p.name for p in (out / "overlays" / "run_id=r1" / "pair-001").iterdir()) == [
        "answer-image1.png",
        "answer.png",
    ]
