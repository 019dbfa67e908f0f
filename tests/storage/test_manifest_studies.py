"""Manifests with several images per row: lists and labels in CSV, JSONL and Parquet, and their errors."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import (
    MAX_IMAGES_PER_ITEM,
    ManifestItem,
    manifest_fingerprint,
    parse_manifest,
    read_manifest,
    stable_item_id,
)

ROWS = [
    {
        "image": ["prior.png", "current.png"],
        "question": "Has it grown?",
        "image_labels": ["prior", "current"],
    },
    {"image": ["ct/", "s3://scans/mr/t1/", "head.nii.gz"], "question": "Bleed?", "image_labels": None},
    {"image": ["a.png", "b.png"], "question": "Q", "image_labels": ["", None]},  # no label at all
    {"image": "single.png", "question": "Q", "image_labels": ["current"]},
    {"image": ["single.png"], "question": "Q2", "image_labels": None},
]


def _csv_cell(value) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value)
    return '"' + text.replace('"', '""') + '"'


def _write_all(tmp_path, rows):
    """The rows as CSV (JSON array text), JSONL (lists) and Parquet (list<string>); their URIs."""
    header = "image,question,image_labels\n"
    body = "".join(
        ",".join(_csv_cell(row[k]) for k in ("image", "question", "image_labels")) + "\n" for row in rows
    )
    (tmp_path / "m.csv").write_text(header + body)
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    as_lists = [
        {**row, "image": [row["image"]] if isinstance(row["image"], str) else row["image"]} for row in rows
    ]
    pq.write_table(pa.Table.from_pylist(as_lists), tmp_path / "m.parquet")
    return [str(tmp_path / name) for name in ("m.csv", "m.jsonl", "m.parquet")]


def test_lists_and_labels_agree_across_csv_jsonl_and_parquet(tmp_path):
    manifests = [read_manifest(uri) for uri in _write_all(tmp_path, ROWS)]
    assert all(m.errors == () for m in manifests)
    assert manifests[0].items == manifests[1].items == manifests[2].items
    assert pa.Table.from_pylist(ROWS[:1]).schema.field("image").type == pa.list_(pa.string())
    prior, volumes, unlabelled, single, single_list = manifests[0].items
    assert prior.image_uris == (str(tmp_path / "prior.png"), str(tmp_path / "current.png"))
    assert prior.image_labels == ("prior", "current") and prior.image_uri == str(tmp_path / "prior.png")
    # a trailing '/' names a series folder or prefix and survives resolution
    assert volumes.image_uris == (f"{tmp_path}/ct/", "s3://scans/mr/t1/", str(tmp_path / "head.nii.gz"))
    assert volumes.image_labels is None and unlabelled.image_labels is None
    assert single.image_uris == (str(tmp_path / "single.png"),) and single.image_labels == ("current",)
    # one URI in a list is the same item as the URI alone: same derived id as before lists existed
    assert single_list.item_id == stable_item_id(str(tmp_path / "single.png"), "Q2")
    assert "image_labels" not in prior.metadata


def test_derived_ids_and_fingerprints(tmp_path):
    one = stable_item_id("/a.png", "Q")
    assert one == stable_item_id(["/a.png"], "Q")
    assert (
        len({one, stable_item_id(["/a.png", "/b.png"], "Q"), stable_item_id(["/a.png"], "Q", ["prior"])}) == 3
    )
    # the fingerprint of a single-image manifest is the one computed before studies existed: run ids stay
    legacy = parse_manifest(
        b'image,question,item_id,roi_box,site\n/a.png,Q1,a,"1,2,3,4",north\n/b.png,Q2,,,\n', "/m/m.csv"
    )
    assert manifest_fingerprint(legacy) == "9b3636ac309237057422a6d88899a7618aadb24c7c3f20bce53a56ba74ef5f40"
    labelled = parse_manifest(b'image,question,image_labels\n/a.png,Q1,"[""now""]"\n/b.png,Q2,\n', "/m/m.csv")
    plain = parse_manifest(b"image,question\n/a.png,Q1\n/b.png,Q2\n", "/m/m.csv")
    assert manifest_fingerprint(labelled) != manifest_fingerprint(plain)


BAD_STUDY_ROWS = [
    ("[]", "", "", "MissingImage", "image is an empty list; give at least one URI"),
    ('["a.png", " "]', "", "", "MissingImage", "image[1] is empty"),
    ('["a.png", 5]', "", "", "InvalidImageURI", "image[1] must be a URI string, got int 5"),
    ('["a.png", "ftp://x/b.png"]', "", "", "InvalidImageURI", "image[1]: unsupported URI scheme 'ftp'"),
    ('["a.png", b.png]', "", "", "InvalidImageURI", "image starts with '[' but is not a JSON array"),
    ("{many}", "", "", "TooManyImages", f"at most {MAX_IMAGES_PER_ITEM} per row"),
    (
        '["a.png", "b.png"]',
        '["prior"]',
        "",
        "InvalidImageLabels",
        "image_labels has 1 label(s) but image has 2",
    ),
    ('["a.png", "b.png"]', "[1, 2]", "", "InvalidImageLabels", "image_labels[0] must be text, got int 1"),
    ("a.png", "current", "", "InvalidImageLabels", "image_labels must be a list of 1 label(s)"),
    ("a.png", '["x"', "", "InvalidImageLabels", "image_labels starts with '[' but is not a JSON array"),
    ('["a.png", "b.png"]', "", "1,2,3,4", "AmbiguousRoi", "image names 2 URIs"),
    ("ct.nii.gz", "", "1,2,3,4", "AmbiguousRoi", "image names a volume"),
    ("series/", "", "1,2,3,4", "AmbiguousRoi", "image names a volume"),
]


@pytest.mark.parametrize(("image", "labels", "roi_box", "error_type", "message"), BAD_STUDY_ROWS)
def test_bad_study_rows_are_error_rows(tmp_path, image, labels, roi_box, error_type, message):
    many = json.dumps([f"{n}.png" for n in range(MAX_IMAGES_PER_ITEM + 1)])
    row = [_csv_cell(cell) for cell in (image.replace("{many}", many), "Q", labels, roi_box)]
    data = ("image,question,image_labels,roi_box\n" + ",".join(row) + "\n").encode()
    manifest = parse_manifest(data, str(tmp_path / "m.csv"))
    [error] = manifest.errors
    assert manifest.items == () and (error.stage, error.error_type) == ("manifest", error_type)
    assert message in error.message


def test_an_error_row_of_a_readable_list_names_its_first_image(tmp_path):
    data = b'image,question,image_labels\n"[""a.png"", ""b.png""]",Q,"[""x""]"\n'
    [error] = parse_manifest(data, str(tmp_path / "m.csv")).errors
    assert error.image_uri == str(tmp_path / "a.png") and error.item_id is None  # labels unusable: no id


def test_many_images_up_to_the_limit_are_one_item(tmp_path):
    images = [f"s{n}.png" for n in range(MAX_IMAGES_PER_ITEM)]
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": images, "question": "Q"}) + "\n")
    [item] = read_manifest(str(tmp_path / "m.jsonl")).items
    assert len(item.image_uris) == MAX_IMAGES_PER_ITEM


def test_an_item_refuses_a_bare_string_or_mismatched_labels():
    with pytest.raises(TypeError, match="non-empty tuple of URI strings"):
        ManifestItem("a", "/a.png", "Q", None, None, {}, 1)  # would read as the tuple of its characters
    with pytest.raises(ValueError, match="tuple of 2 texts"):
        ManifestItem("a", ("/a.png", "/b.png"), "Q", None, None, {}, 1, ("prior",))


def test_a_logged_answer_column_is_the_items_given_answer_and_part_of_its_content():
    from storage import manifest_fingerprint, parse_manifest

    with_answers = parse_manifest(
        b"image,question,answer,site\na.png,Is there a nodule?,yes,x\nb.png,Is there a nodule?,,x\n",
        "/data/m.csv",
    )
    first, second = with_answers.items
    assert (first.answer, second.answer) == ("yes", None) and "answer" not in first.metadata
    other = parse_manifest(
        b"image,question,answer,site\na.png,Is there a nodule?,no,x\nb.png,Is there a nodule?,,x\n",
        "/data/m.csv",
    )
    assert manifest_fingerprint(other) != manifest_fingerprint(with_answers)
    bad = parse_manifest(b'{"image": "a.png", "question": "Q?", "answer": 3}\n', "/data/m.jsonl")
    assert [error.error_type for error in bad.errors] == ["InvalidAnswer"]
