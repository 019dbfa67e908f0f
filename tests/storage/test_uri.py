import os

import pytest

from storage import InvalidURIError, join_key, join_uri, normalize_uri, parent_uri, parse_uri, resolve_uri
from storage.uri import validate_key


def test_parse_forms():
    parsed = parse_uri("s3://scans/cxr//a.png")
    assert (parsed.scheme, parsed.bucket, parsed.path) == ("s3", "scans", "cxr/a.png")
    assert parse_uri("file:///data/x%20y.png").path == "/data/x y.png"
    assert parse_uri("rel/a.png").path == os.path.join(os.getcwd(), "rel/a.png")
    assert normalize_uri("s3://scans") == "s3://scans"


@pytest.mark.parametrize(
    "bad", ["", "http://host/a.png", "gs://b/k", "s3:///key", "file://otherhost/a.png", "s3://b/../x"]
)
def test_parse_rejects(bad):
    with pytest.raises(InvalidURIError):
        parse_uri(bad)


def test_resolve_relative_local_and_s3(tmp_path):
    assert resolve_uri("img/a.png", str(tmp_path)) == str(tmp_path / "img" / "a.png")
    assert resolve_uri("../b.png", str(tmp_path / "m")) == str(tmp_path / "b.png")
    assert resolve_uri("img/a.png", "s3://bkt/batch") == "s3://bkt/batch/img/a.png"
    assert resolve_uri("../other/b.png", "s3://bkt/batch") == "s3://bkt/other/b.png"
    assert resolve_uri("s3://else/k.png", "s3://bkt/batch") == "s3://else/k.png"
    assert resolve_uri("/abs/c.png", "s3://bkt/batch") == "/abs/c.png"
    assert resolve_uri("file:///abs/d.png", "s3://bkt") == "/abs/d.png"
    with pytest.raises(InvalidURIError, match="climbs above its bucket"):
        resolve_uri("../../x.png", "s3://bkt/batch")


def test_parent_and_join():
    assert parent_uri("s3://bkt/a/b/m.csv") == "s3://bkt/a/b"
    assert parent_uri("s3://bkt/m.csv") == "s3://bkt"
    assert parent_uri("/data/m.csv") == "/data"
    assert join_key("answers/", "/run_id=r1", "part-00000.parquet") == "answers/run_id=r1/part-00000.parquet"
    assert join_uri("s3://bkt", "runs", "x.json") == "s3://bkt/runs/x.json"
    assert join_uri("s3://bkt/out", "runs") == "s3://bkt/out/runs"
    assert join_uri("/out", "a/b") == "/out/a/b"


@pytest.mark.parametrize("bad", ["", "../x", "a/../b", "a//b", "a\\b", "./a", "a/."])
def test_join_key_rejects_escapes(bad):
    with pytest.raises(InvalidURIError):
        join_key(bad)


def test_validate_key_rejects_absolute():
    with pytest.raises(InvalidURIError, match="relative"):
        validate_key("/etc/passwd")
