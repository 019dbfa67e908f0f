import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import (
    ManifestError,
    manifest_fingerprint,
    open_store,
    parse_manifest,
    parse_roi_box,
    read_manifest,
    shard,
    stable_item_id,
)

CSV = """image,question,item_id,roi_box,site,sex
img/a.png,Where is the nodule?,a1,"10,20,30,40",north,F
/abs/b.dcm,Is there an effusion?,,,south,M
s3://other/c.jpg,  Any fracture?  ,c3,,north,
"""


def _errors(manifest):
    return [(e.row_number, e.error_type) for e in manifest.errors]


def test_csv_items_metadata_and_resolution(tmp_path):
    (tmp_path / "m.csv").write_text(CSV)
    manifest = read_manifest(str(tmp_path / "m.csv"))
    assert manifest.errors == ()
    a, b, c = manifest.items
    assert (a.item_id, a.image_uri, a.roi_box, a.row_number) == (
        "a1",
        str(tmp_path / "img/a.png"),
        (10, 20, 30, 40),
        1,
    )
    assert a.metadata == {"site": "north", "sex": "F"}
    assert b.image_uri == "/abs/b.dcm" and b.roi_box is None and b.row_number == 2
    expected_id = hashlib.sha256(b"/abs/b.dcm\nIs there an effusion?").hexdigest()[:16]
    assert b.item_id == expected_id == stable_item_id("/abs/b.dcm", "Is there an effusion?")
    assert c.image_uri == "s3://other/c.jpg" and c.question == "Any fracture?" and c.metadata["sex"] == ""
    assert manifest.columns == ("image", "question", "item_id", "roi_box", "site", "sex")


def test_missing_required_columns_fail_fast(tmp_path):
    (tmp_path / "m.csv").write_text("image,prompt,site\na.png,hi,x\n")
    with pytest.raises(
        ManifestError, match=r"lacks required column\(s\) question; found: image, prompt, site"
    ):
        read_manifest(str(tmp_path / "m.csv"))
    (tmp_path / "h.csv").write_text("img,site\n")  # header only: still checked
    with pytest.raises(ManifestError, match="image, question"):
        read_manifest(str(tmp_path / "h.csv"))


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "empty"), ("image,image,question\n", "repeats column"), (b"\xff\xfe\x00bad", "UTF-8")],
)
def test_unusable_csv(tmp_path, content, message):
    path = tmp_path / "m.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ManifestError, match=message):
        read_manifest(str(path))


def test_unknown_extension(tmp_path):
    (tmp_path / "m.xlsx").write_bytes(b"x")
    with pytest.raises(ManifestError, match=r"unknown extension; allowed: \.csv, \.jsonl"):
        read_manifest(str(tmp_path / "m.xlsx"))


BAD_ROWS = """image,question,item_id,roi_box,roi_mask
a.png,ok?,dup,,
,no image?,,,
b.png,   ,,,
c.png,bad box?,,"1,2,3",
d.png,box order?,,"5,5,1,1",
e.png,dup again?,dup,,
f.png,traversal?,../evil,,
g.png,slash?,a/b,,
h.png,backslash?,a\\b,,
i.png,hidden?,.hidden,,
j.png,too long?,{long_id},,
k.png,both rois?,,"0,0,1,1",mask.png
l.png,ok too?,good_id-2.x,,masks/l.png
a.png,ok?,,,
a.png,ok?,,,
m.png,short row
"""


def test_bad_rows_become_error_records(tmp_path):
    (tmp_path / "m.csv").write_text(BAD_ROWS.replace("{long_id}", "x" * 129))
    manifest = read_manifest(str(tmp_path / "m.csv"))
    assert [(i.row_number, i.item_id) for i in manifest.items] == [
        (1, "dup"),
        (13, "good_id-2.x"),
        (14, stable_item_id(str(tmp_path / "a.png"), "ok?")),
    ]
    assert manifest.items[1].roi_mask_uri == str(tmp_path / "masks/l.png")
    assert _errors(manifest) == [
        (2, "MissingImage"),
        (3, "MissingQuestion"),
        (4, "InvalidRoiBox"),
        (5, "InvalidRoiBox"),
        (6, "DuplicateItemId"),
        (7, "InvalidItemId"),
        (8, "InvalidItemId"),
        (9, "InvalidItemId"),
        (10, "InvalidItemId"),
        (11, "InvalidItemId"),
        (12, "ConflictingRoi"),
        (15, "DuplicateItemId"),
        (16, "MalformedRow"),
    ]
    by_row = {e.row_number: e for e in manifest.errors}
    assert by_row[6].item_id == "dup" and "already used by row 1" in by_row[6].message
    assert by_row[6].image_uri == str(tmp_path / "e.png") and by_row[6].stage == "manifest"
    assert "allowed: 1-128 characters of [A-Za-z0-9._-]" in by_row[7].message
    assert by_row[2].image_uri is None and by_row[16].message == "row has 2 fields, header has 5"


def test_jsonl_and_parquet_agree(tmp_path):
    rows = [
        {"image": "x/a.png", "question": "Q1", "roi_box": [1, 2, 3, 4], "age": 42, "flag": True},
        {"image": "x/b.png", "question": "Q2", "age": None},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n[1,2]\n{broken\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    from_jsonl = read_manifest(str(tmp_path / "m.jsonl"))
    from_parquet = read_manifest(str(tmp_path / "m.parquet"))
    assert from_jsonl.items == from_parquet.items
    first = from_jsonl.items[0]
    assert first.roi_box == (1.0, 2.0, 3.0, 4.0) and first.image_uri == str(tmp_path / "x/a.png")
    assert first.metadata == {"age": "42", "flag": "true"}
    assert from_jsonl.items[1].metadata == {"age": "", "flag": ""}
    assert _errors(from_jsonl) == [(3, "MalformedRow"), (4, "MalformedRow")]
    assert from_parquet.errors == ()


def test_jsonl_row_missing_question_key(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"image": "a.png", "question": "q"}\n{"image": "b.png"}\n')
    assert _errors(read_manifest(str(tmp_path / "m.jsonl"))) == [(2, "MissingQuestion")]


TYPED_ROWS = [
    '{"image": [], "question": "Q"}',
    '{"image": ["a.png", 5], "question": "Q"}',
    '{"image": 5, "question": "Q"}',
    '{"image": "a.png", "question": 42}',
    '{"image": "a.png", "question": ["Q"]}',
    '{"image": "a.png", "question": "Q", "item_id": 1.5}',
    '{"image": "a.png", "question": "Q", "item_id": true}',
    '{"image": "a.png", "question": "Q", "item_id": 1e300}',
    '{"image": "a.png", "question": "Q", "roi_mask": ["m.png"]}',
    '{"image": "a.png", "question": "Q", "image": "b.png"}',
    '{"image": "a.png", "question": "Q", "site": {"k": 1, "k": 2}}',
    '{"image": "a.png", "question": "Q", "item_id": 7}',
    '{"image": "b.png", "question": "Q", "item_id": 8.0}',
    '{"image": "c.png", "question": "Q", "item_id": NaN}',
]


def test_jsonl_cells_of_the_wrong_type_are_row_errors(tmp_path):
    (tmp_path / "m.jsonl").write_text("\n".join(TYPED_ROWS) + "\n")
    manifest = read_manifest(str(tmp_path / "m.jsonl"))
    assert _errors(manifest) == [
        (1, "MissingImage"),
        (2, "InvalidImageURI"),
        (3, "InvalidImageURI"),
        (4, "InvalidQuestion"),
        (5, "InvalidQuestion"),
        (6, "InvalidItemId"),
        (7, "InvalidItemId"),
        (8, "InvalidItemId"),
        (9, "InvalidRoiMask"),
        (10, "MalformedRow"),
        (11, "MalformedRow"),
    ]
    by_row = {e.row_number: e for e in manifest.errors}
    assert by_row[1].message == "image is an empty list; give at least one URI"
    assert by_row[2].message == "image[1] must be a URI string, got int 5"
    assert by_row[2].image_uri is None and by_row[2].item_id is None  # a bad list names no image
    assert by_row[3].message == "image must be a URI string or a list of them, got int 5"
    assert by_row[4].message == "question must be text, got int 42"
    assert "1.5 is not a whole number" in by_row[6].message
    assert "repeats key 'image'" in by_row[10].message and "repeats key 'k'" in by_row[11].message
    # integers are ids as their digits; a float that is a whole number (a Parquet int column with nulls)
    # too; NaN is a missing id
    assert [(i.row_number, i.item_id) for i in manifest.items] == [
        (12, "7"),
        (13, "8"),
        (14, stable_item_id(str(tmp_path / "c.png"), "Q")),
    ]


def test_parquet_types_follow_the_same_rules(tmp_path):
    table = pa.table(
        {
            "image": [["a.png"], ["b.png", "c.png"], [], ["d.png", None]],
            "question": ["Q"] * 4,
            "image_labels": [None, ["prior", None], None, None],
        }
    )
    pq.write_table(table, tmp_path / "lists.parquet")
    lists = read_manifest(str(tmp_path / "lists.parquet"))
    assert [(i.image_uris, i.image_labels) for i in lists.items] == [
        ((str(tmp_path / "a.png"),), None),
        ((str(tmp_path / "b.png"), str(tmp_path / "c.png")), ("prior", "")),
    ]
    assert _errors(lists) == [(3, "MissingImage"), (4, "InvalidImageURI")]
    ids = pa.table({"image": ["a.png", "b.png", "c.png"], "question": ["Q"] * 3, "item_id": [1.0, None, 2.5]})
    pq.write_table(ids, tmp_path / "ids.parquet")
    manifest = read_manifest(str(tmp_path / "ids.parquet"))
    assert [i.item_id for i in manifest.items] == ["1", stable_item_id(str(tmp_path / "b.png"), "Q")]
    assert _errors(manifest) == [(3, "InvalidItemId")]


@pytest.mark.integration
def test_manifest_on_s3_resolves_against_its_prefix(s3_bucket):
    store = open_store(f"{s3_bucket}/batch-07")
    body = "image,question\nimg/a.png,Q\n../shared/b.png,Q\n../../escape.png,Q\n/local/c.png,Q\n"
    store.write_bytes("manifest.csv", body.encode())
    manifest = read_manifest(f"{s3_bucket}/batch-07/manifest.csv")
    assert [i.image_uri for i in manifest.items] == [
        f"{s3_bucket}/batch-07/img/a.png",
        f"{s3_bucket}/shared/b.png",
        "/local/c.png",
    ]
    assert _errors(manifest) == [(3, "InvalidImageURI")]
    buffer = io.BytesIO()
    pq.write_table(pa.table({"image": ["img/a.png"], "question": ["Q"]}), buffer)
    store.write_bytes("m.parquet", buffer.getvalue())
    assert (
        read_manifest(f"{s3_bucket}/batch-07/m.parquet").items[0].image_uri
        == f"{s3_bucket}/batch-07/img/a.png"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1,2,3,4", (1, 2, 3, 4)),
        (" [1.5, 2, 3, 4] ", (1.5, 2, 3, 4)),
        ([0, 0, 1, 1], (0, 0, 1, 1)),
        ("", None),
    ],
)
def test_parse_roi_box(value, expected):
    assert parse_roi_box(value) == expected


@pytest.mark.parametrize(
    "value", ["1,2,3", "a,b,c,d", "1,2,nan,4", "-1,0,2,2", "3,0,1,2", [True, 0, 1, 1], 5]
)
def test_parse_roi_box_rejects(value):
    with pytest.raises(ValueError, match="roi_box"):
        parse_roi_box(value)


def test_fingerprint_tracks_content_not_row_numbers():
    base = parse_manifest(b"image,question\n/a.png,Q1\n/b.png,Q2\n", "/m/m.csv")
    with_bad_row = parse_manifest(b"image,question\n,oops\n/a.png,Q1\n/b.png,Q2\n", "/m/m.csv")
    changed = parse_manifest(b"image,question\n/a.png,Q1\n/b.png,Q3\n", "/m/m.csv")
    reordered = parse_manifest(b"image,question\n/b.png,Q2\n/a.png,Q1\n", "/m/m.csv")
    assert manifest_fingerprint(base) == manifest_fingerprint(with_bad_row)
    assert len({manifest_fingerprint(m) for m in (base, changed, reordered)}) == 3


def test_shard_is_ordered_and_deterministic():
    manifest = parse_manifest(
        ("image,question\n" + "".join(f"/i{n}.png,Q\n" for n in range(7))).encode(), "/m.csv"
    )
    shards = shard(manifest.items, 3)
    assert [len(s) for s in shards] == [3, 3, 1]
    assert [i.row_number for s in shards for i in s] == list(range(1, 8))
    assert shard(manifest.items, 3) == shards and shard([], 3) == []
    with pytest.raises(ValueError, match="positive integer"):
        shard(manifest.items, 0)
