import os
import stat

import boto3
import pytest

from storage import (
    InvalidURIError,
    LocalStore,
    ObjectNotFound,
    OutputNotWritable,
    S3Store,
    StoreCache,
    open_store,
    read_uri,
)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "root"))
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(f"{bucket}/prefix")


def test_round_trip_list_size_delete(store):
    assert store.list() == []
    store.write_bytes("b/two.bin", b"22")
    store.write_bytes("a.bin", b"1")
    store.write_bytes("b/c/three.bin", b"333")
    assert store.read_bytes("b/c/three.bin") == b"333"
    assert store.list() == ["a.bin", "b/c/three.bin", "b/two.bin"]
    assert store.list("b/") == ["b/c/three.bin", "b/two.bin"]
    assert store.list("b/c") == ["b/c/three.bin"]
    assert store.size("b/two.bin") == 2
    assert store.exists("a.bin") and not store.exists("nope.bin")
    store.write_bytes("a.bin", b"replaced")
    assert store.read_bytes("a.bin") == b"replaced"
    store.delete("a.bin")
    store.delete("a.bin")  # deleting twice is fine, as on S3
    assert not store.exists("a.bin")
    assert store.list() == ["b/c/three.bin", "b/two.bin"]


def test_missing_object_is_object_not_found(store):
    with pytest.raises(ObjectNotFound, match=r"missing\.bin"):
        store.read_bytes("missing.bin")
    with pytest.raises(ObjectNotFound):
        store.size("missing.bin")


@pytest.mark.parametrize("key", ["../escape.bin", "a/../../b", "/abs.bin", ""])
def test_keys_cannot_escape_the_root(store, key):
    with pytest.raises(InvalidURIError):
        store.write_bytes(key, b"x")


def test_uri_names_the_object(store):
    uri = store.write_bytes("x/y.bin", b"x")
    assert uri == store.uri("x/y.bin")
    assert read_uri(uri) == b"x"


def test_local_write_is_atomic_when_rename_fails(tmp_path, monkeypatch):
    store = LocalStore(str(tmp_path))
    store.write_bytes("part.parquet", b"old complete content")

    def failing_replace(src, dst):
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OutputNotWritable, match=r"cannot write .*part\.parquet: disk went away"):
        store.write_bytes("part.parquet", b"new")
    monkeypatch.undo()
    assert store.read_bytes("part.parquet") == b"old complete content"
    assert sorted(os.listdir(tmp_path)) == ["part.parquet"]  # temp file cleaned up


def test_local_temp_files_are_hidden_and_mode_is_normal(tmp_path):
    store = LocalStore(str(tmp_path))
    (tmp_path / ".part-00000.parquet.abc123.tmp").write_bytes(b"in flight")
    store.write_bytes("part-00001.parquet", b"done")
    assert store.list() == ["part-00001.parquet"]
    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE(os.stat(tmp_path / "part-00001.parquet").st_mode)
    assert mode == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.integration
def test_s3_write_is_one_put_object(s3_bucket):
    store = open_store(s3_bucket)
    operations = []
    store._client.meta.events.register("before-call.s3", lambda model, **_: operations.append(model.name))
    store.write_bytes("big.bin", b"x" * (12 * 1024 * 1024))  # above boto3's 8 MiB multipart threshold
    assert operations == ["PutObject"]
    assert store.size("big.bin") == 12 * 1024 * 1024


@pytest.mark.integration
def test_s3_explicit_endpoint_without_env(s3_bucket, s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    store = open_store(s3_bucket, endpoint_url=s3_env.endpoint_url, region="eu-west-1")
    store.write_bytes("k.txt", b"v")
    assert store.endpoint_url == s3_env.endpoint_url
    bucket = s3_bucket.removeprefix("s3://")
    raw = boto3.client("s3", endpoint_url=s3_env.endpoint_url).get_object(Bucket=bucket, Key="k.txt")
    assert raw["Body"].read() == b"v"


@pytest.mark.integration
def test_s3_missing_bucket_is_object_not_found(s3_env):
    with pytest.raises(ObjectNotFound, match="bucket"):
        open_store("s3://no-such-bucket-vlm").read_bytes("a")


@pytest.mark.integration
def test_store_cache_reuses_one_client(s3_bucket, tmp_path):
    cache = StoreCache()
    open_store(s3_bucket).write_bytes("dir/a.png", b"A")
    (tmp_path / "b.png").write_bytes(b"B")
    first, key = cache.locate(f"{s3_bucket}/dir/a.png")
    second, _ = cache.locate(f"{s3_bucket}/dir/a.png")
    assert isinstance(first, S3Store) and key == "dir/a.png"
    assert first._client is second._client
    assert cache.read_uri(f"{s3_bucket}/dir/a.png") == b"A"
    assert cache.read_uri(str(tmp_path / "b.png")) == b"B"
    assert cache.read_uri(f"file://{tmp_path}/b.png") == b"B"
