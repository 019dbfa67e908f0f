import os
import socket
import stat
import time

import boto3
import pytest

from storage import (
    InvalidURIError,
    LocalStore,
    NotARegularFile,
    ObjectNotFound,
    ObjectTooLarge,
    OutputNotWritable,
    S3Store,
    StorageConnectionError,
    StoreCache,
    _s3,
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


# Reads that could block or never end: only regular files are read, and a size cap is checked first.


@pytest.mark.timeout(10)  # an open() that waits for a FIFO's writer would hang here, not fail
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(NotARegularFile, match=r"pipe\.png is a FIFO \(named pipe\); only regular files"):
        StoreCache().read_uri(str(tmp_path / "pipe.png"))


@pytest.mark.timeout(10)  # reading /dev/zero to the end would fill memory
def test_devices_directories_and_sockets_are_refused(tmp_path):
    with pytest.raises(NotARegularFile, match="/dev/zero is a character device"):
        LocalStore("/dev").read_bytes("zero")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(NotARegularFile, match="is a directory"):
        LocalStore(str(tmp_path)).read_bytes("folder.png")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "sock.png"))
        with pytest.raises(NotARegularFile, match="is a socket"):
            LocalStore(str(tmp_path)).read_bytes("sock.png")


def test_a_local_file_over_max_bytes_is_refused_before_it_is_opened(tmp_path, monkeypatch):
    store = LocalStore(str(tmp_path))
    store.write_bytes("a.png", b"x" * 100)
    assert store.read_bytes("a.png", max_bytes=100) == b"x" * 100
    monkeypatch.setattr(os, "open", lambda *args: pytest.fail("opened a file over the limit"))
    with pytest.raises(ObjectTooLarge, match=r"a\.png is 100 bytes, more than the 99 allowed"):
        store.read_bytes("a.png", max_bytes=99)


def test_a_local_file_growing_past_max_bytes_is_cut_off(tmp_path, monkeypatch):
    store = LocalStore(str(tmp_path))
    store.write_bytes("a.png", b"x" * 10)
    real_fstat = os.fstat

    def fstat_before_growth(fd):  # the size seen before the file grew
        status = real_fstat(fd)
        (tmp_path / "a.png").write_bytes(b"x" * 1000)
        return status

    monkeypatch.setattr(os, "fstat", fstat_before_growth)
    with pytest.raises(ObjectTooLarge, match="grew past 100 bytes"):
        store.read_bytes("a.png", max_bytes=100)


class _BodyReads:
    """Wraps a response body and records every read of it."""

    def __init__(self, body, reads: list) -> None:
        self._body, self._reads = body, reads

    def read(self, *args):
        self._reads.append(args)
        return self._body.read(*args)

    def close(self) -> None:
        self._body.close()


@pytest.mark.integration
def test_s3_object_over_max_bytes_is_refused_before_its_body_is_read(s3_bucket, monkeypatch):
    client, reads = boto3.client("s3"), []
    get_object = client.get_object

    def recorded_get_object(**kwargs):
        response = get_object(**kwargs)
        response["Body"] = _BodyReads(response["Body"], reads)
        return response

    monkeypatch.setattr(client, "get_object", recorded_get_object)
    store = S3Store(s3_bucket.removeprefix("s3://"), client=client)
    store.write_bytes("big.dcm", b"x" * 5000)
    with pytest.raises(ObjectTooLarge, match=r"big\.dcm is 5,000 bytes, more than the 4,999 allowed"):
        store.read_bytes("big.dcm", max_bytes=4999)
    assert reads == []  # decided from the response headers
    assert store.read_bytes("big.dcm", max_bytes=5000) == b"x" * 5000 and reads


def test_s3_client_bounds_every_request():
    config = _s3.make_client("http://127.0.0.1:9").meta.config
    assert (config.connect_timeout, config.read_timeout) == (
        _s3.CONNECT_TIMEOUT_SECONDS,
        _s3.READ_TIMEOUT_SECONDS,
    )
    assert config.retries["mode"] in ("standard", "adaptive") and config.retries["total_max_attempts"] >= 2


@pytest.mark.timeout(30)
def test_s3_read_from_a_silent_endpoint_times_out(s3_env, monkeypatch):
    """An endpoint that accepts the connection and never answers: the read gives up, it does not hang."""
    monkeypatch.setattr(_s3, "READ_TIMEOUT_SECONDS", 0.5)
    monkeypatch.setattr(_s3, "_RETRIES", {"mode": "standard", "max_attempts": 2})
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.perf_counter()
        with pytest.raises(StorageConnectionError, match="cannot reach the S3 endpoint"):
            StoreCache(endpoint_url=endpoint).read_uri("s3://bucket/a.png")
    assert time.perf_counter() - started < 10
