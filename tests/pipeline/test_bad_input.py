"""Bad input through the whole flow: each case ends as one clear errors row while the rest completes."""

from __future__ import annotations

import os
import traceback

import pytest

from flows.audit import audit
from storage import CredentialsError, ManifestError, open_store, read_table
from tests.pipeline.conftest import fast_config, manifest_bytes, png_bytes

pytestmark = pytest.mark.usefixtures("prefect_server")
QUESTION = "Where is the nodule?"


def test_every_bad_row_and_image_is_an_error_row_and_the_rest_completes(tmp_path, model_dir, bad_images):
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for index in range(2):
        (data / f"good-{index}.png").write_bytes(png_bytes(index))
        rows.append(
            {"item_id": f"good-{index}", "image": f"good-{index}.png", "question": QUESTION, "site": "a"}
        )
    for case, (name, content, _stage, _type) in bad_images.items():
        if content is not None:
            (data / name).write_bytes(content)
        rows.append({"item_id": case, "image": name, "question": QUESTION, "site": "b"})
    rows += [
        {"item_id": "no-question", "image": "good-0.png", "question": "  ", "site": "c"},
        {"item_id": "good-0", "image": "good-1.png", "question": QUESTION, "site": "c"},  # duplicate id
        {"item_id": "../../etc/passwd", "image": "good-1.png", "question": QUESTION, "site": "c"},
    ]
    (data / "manifest.csv").write_bytes(manifest_bytes(rows))
    out = str(tmp_path / "out")

    result = audit(fast_config(data / "manifest.csv", out, model=model_dir, shard_size=3))

    counts = result.counts
    assert (counts["manifest_rows"], counts["items"], counts["manifest_errors"]) == (10, 7, 3)
    assert (counts["ok"], counts["failed"], counts["errors"]) == (2, 5, 8)
    errors = {row["item_id"] or row["row_number"]: row for row in read_table(out, "errors").to_pylist()}
    for case, (_name, _content, stage, error_type) in bad_images.items():
        assert (errors[case]["stage"], errors[case]["error_type"]) == (stage, error_type)
    assert errors["huge"]["message"].startswith(f"{data / 'huge.png'}: ")  # named, rejected from the header
    assert "400000000 pixels" in errors["huge"]["message"].replace(",", "")
    manifest_errors = {row["row_number"]: row for row in errors.values() if row["stage"] == "manifest"}
    assert {row["error_type"] for row in manifest_errors.values()} == {
        "MissingQuestion",
        "DuplicateItemId",
        "InvalidItemId",
    }
    assert "'../../etc/passwd' is unsafe" in manifest_errors[10]["message"]
    answers = read_table(out, "answers").to_pandas().set_index("item_id")
    assert sorted(answers.index) == sorted(["good-0", "good-1", *bad_images])  # each valid item exactly once
    assert set(answers.loc[["good-0", "good-1"], "status"]) == {"ok"}
    assert not os.path.exists(os.path.join(out, "overlays", f"run_id={result.run_id}", "huge"))
    assert not any(".." in path for path, _dirs, _files in os.walk(out))


def test_missing_required_column_fails_fast_naming_it(tmp_path, model_dir):
    (tmp_path / "manifest.csv").write_bytes(b"item_id,image,site\na1,a.png,north\n")
    out = tmp_path / "out"
    with pytest.raises(
        ManifestError, match="lacks required column\\(s\\) question; found: item_id, image, site"
    ):
        audit(fast_config(tmp_path / "manifest.csv", out, model=model_dir))
    assert not out.exists()  # nothing written


def test_wrong_s3_credentials_fail_clearly_and_write_nothing(
    tmp_path, model_dir, s3_bucket, s3_auth, monkeypatch
):
    manifest = tmp_path / "manifest.csv"
    (tmp_path / "a.png").write_bytes(png_bytes(0))
    manifest.write_bytes(manifest_bytes([{"item_id": "a1", "image": "a.png", "question": QUESTION}]))
    wrong_secret = "wrong-" + s3_auth.secret_access_key[:16]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_auth.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    with pytest.raises(CredentialsError, match=r"SignatureDoesNotMatch.*AWS_SECRET_ACCESS_KEY") as info:
        audit(fast_config(manifest, f"{s3_bucket}/out", model=model_dir))
    assert wrong_secret not in "".join(traceback.format_exception(info.value))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_auth.secret_access_key)
    assert open_store(s3_bucket).list() == []  # not even run.json or the manifest errors part


@pytest.mark.timeout(300)  # before confinement the FIFO row hung the run for good
def test_a_local_manifest_cannot_reach_outside_its_folder_or_hang_the_run(tmp_path, model_dir):
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "outside.png").write_bytes(png_bytes(7))
    (data / "good.png").write_bytes(png_bytes(0))
    (data / "leak.png").symlink_to(tmp_path / "outside.png")
    os.mkfifo(data / "pipe.png")
    rows = [
        {"item_id": "good", "image": "good.png", "question": QUESTION},
        {"item_id": "climbs", "image": "../outside.png", "question": QUESTION},
        {"item_id": "absolute", "image": str(tmp_path / "outside.png"), "question": QUESTION},
        {"item_id": "symlink", "image": "leak.png", "question": QUESTION},
        {"item_id": "fifo", "image": "pipe.png", "question": QUESTION},
    ]
    (data / "manifest.csv").write_bytes(manifest_bytes(rows))
    out = str(tmp_path / "out")

    result = audit(fast_config(data / "manifest.csv", out, model=model_dir))

    assert (result.counts["ok"], result.counts["failed"]) == (1, 4)
    errors = {row["item_id"]: row for row in read_table(out, "errors").to_pylist()}
    assert {item: (row["stage"], row["error_type"]) for item, row in errors.items()} == {
        "climbs": ("image", "InputNotAllowed"),
        "absolute": ("image", "InputNotAllowed"),
        "symlink": ("image", "InputNotAllowed"),
        "fifo": ("image", "NotARegularFile"),
    }
    assert errors["climbs"]["image_uri"] == str(tmp_path / "outside.png")
    assert f"outside the manifest's store {data}" in errors["climbs"]["message"]
    overlays = os.listdir(os.path.join(out, "overlays", f"run_id={result.run_id}"))
    assert overlays == ["good"]  # nothing read from outside was rendered or stored
