"""Object stores: one small interface over a local folder and an S3 prefix.

Keys are relative and '/'-separated. ``write_bytes`` is atomic on both: locally a temporary file in
the same folder is renamed over the target (``os.replace``); on S3 one ``put_object`` either stores the
whole object or nothing. Readers therefore never see a half-written object. ``delete`` of a missing
key is a no-op on both, as on S3.

Reads end: a local read refuses anything but a regular file (a FIFO would wait for a writer forever,
``/dev/zero`` never ends), and ``read_bytes(key, max_bytes=...)`` refuses a larger object from its
size (``stat``, or the GET response's ``Content-Length``) before reading its bytes. S3 requests have
connect and read timeouts (``storage._s3``).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from storage import _s3
from storage.errors import NotARegularFile, ObjectNotFound, ObjectTooLarge, OutputNotWritable, StorageError
from storage.uri import ParsedURI, join_key, parse_uri, validate_key

# temp files are hidden (leading '.') so pyarrow datasets and '*.parquet' globs skip them
_TEMP_NAME = re.compile(r"^\..+\.tmp$")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # mkstemp creates 0600; finished files get the usual mode


def _not_writable(path: str, exc: OSError) -> OutputNotWritable:
    return OutputNotWritable(
        f"cannot write {path}: {exc.strerror or exc}; choose an output root you can write to"
    )


class ObjectStore(ABC):
    """A flat namespace of byte objects under a root URI."""

    root: str

    @abstractmethod
    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """Return the object's bytes; ``ObjectNotFound`` if it does not exist.

        With ``max_bytes`` an object larger than that raises ``ObjectTooLarge`` before its bytes are read.
        """

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> str:
        """Store ``data`` atomically under ``key`` (replacing any object) and return its URI."""

    @abstractmethod
    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` only if no object is there; False (nothing written) if one is.

        Atomic against a concurrent writer of the same key: exactly one of them creates it.
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """True when an object exists at ``key``."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All keys under ``prefix`` (recursive), sorted; the prefix is a plain string prefix."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes; ``ObjectNotFound`` if it does not exist."""

    @abstractmethod
    def uri(self, key: str = "") -> str:
        """The absolute URI of ``key`` (of the root for '')."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r})"


_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _check_regular(path: str, status: os.stat_result, max_bytes: int | None) -> None:
    """Refuse what is not a regular file (reading it could block or never end) or is over ``max_bytes``."""
    if not stat.S_ISREG(status.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(status.st_mode), "not a regular file")
        raise NotARegularFile(f"{path} is {kind}; only regular files are read")
    _check_size(path, status.st_size, max_bytes)


def _check_size(uri: str, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise ObjectTooLarge(f"{uri} is {size:,} bytes, more than the {max_bytes:,} allowed")


@contextlib.contextmanager
def _complete_temp_file(path: str, data: bytes) -> Iterator[str]:
    """A temporary file beside `path` holding all of `data` (flushed to disk, the usual mode), removed
    on exit unless it was renamed into place: what atomic local writes start from."""
    folder, name = os.path.split(path)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, temp_path = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    except OSError as exc:
        raise _not_writable(path, exc) from exc
    try:
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp_path, _FILE_MODE)
        except OSError as exc:
            raise _not_writable(path, exc) from exc
        yield temp_path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_path)


class LocalStore(ObjectStore):
    """Objects as files under a local folder (created on first write)."""

    def __init__(self, root: str) -> None:
        parsed = parse_uri(root)
        if parsed.scheme != "file":
            raise StorageError(f"LocalStore needs a local path or file:// URI, got {root!r}")
        self.root = parsed.path

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *validate_key(key).split("/"))

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        path = self._path(key)
        try:
            _check_regular(path, os.stat(path), max_bytes)  # a FIFO or device is refused before opening
            # O_NONBLOCK: had the path become a FIFO since the stat, opening it returns at once instead of
            # waiting for a writer (regular files ignore the flag); fstat then checks what was opened
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"no such object: {path}") from exc
        with os.fdopen(fd, "rb") as handle:
            status = os.fstat(fd)
            _check_regular(path, status, max_bytes)
            if max_bytes is None:
                return handle.read()
            # sized by the fstat (read(n) allocates n bytes); a file that grew since is read on, at
            # most to one byte past the limit
            data = handle.read(status.st_size + 1)
            if len(data) > status.st_size:
                data += handle.read(max_bytes + 1 - len(data))
        if len(data) > max_bytes:
            raise ObjectTooLarge(f"{path} grew past {max_bytes:,} bytes while being read")
        return data

    def write_bytes(self, key: str, data: bytes) -> str:
        path = self._path(key)
        with _complete_temp_file(path, data) as temp_path:
            try:
                os.replace(temp_path, path)  # a rename within one file system: atomic on POSIX
            except OSError as exc:
                raise _not_writable(path, exc) from exc
        return path

    def create_exclusive(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        with _complete_temp_file(path, data) as temp_path:
            try:
                os.link(temp_path, path)  # fails if the key exists; readers never see a partial object
            except FileExistsError:
                return False
            except OSError as exc:
                raise _not_writable(path, exc) from exc
        return True

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def list(self, prefix: str = "") -> list[str]:
        # walk only the deepest folder the prefix names, not the whole root
        folder_key = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = os.path.join(self.root, *validate_key(folder_key).split("/")) if folder_key else self.root
        if not os.path.isdir(start):
            return []
        keys = []
        for folder, _dirs, files in os.walk(start):
            relative = os.path.relpath(folder, self.root)
            for name in files:
                if _TEMP_NAME.match(name):
                    continue  # an in-flight atomic write, not an object yet
                key = name if relative == "." else f"{relative.replace(os.sep, '/')}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._path(key))

    def size(self, key: str) -> int:
        path = self._path(key)
        if not os.path.isfile(path):
            raise ObjectNotFound(f"no such object: {path}")
        return os.path.getsize(path)

    def uri(self, key: str = "") -> str:
        return self._path(key) if key else self.root


class S3Store(ObjectStore):
    """Objects under ``s3://bucket/prefix`` through boto3 (settings from the standard AWS chain)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root = str(ParsedURI("s3", bucket, self.prefix))
        self._client = client if client is not None else _s3.make_client(endpoint_url, region)
        self.endpoint_url = _s3.client_endpoint(self._client)
        self.region = self._client.meta.region_name

    def _key(self, key: str) -> str:
        return join_key(self.prefix, validate_key(key)) if self.prefix else validate_key(key)

    def _errors(self, action: str, key: str = "") -> AbstractContextManager[None]:
        # plain concatenation: the key may be a list prefix, which is not a valid object key
        return _s3.translate_errors(action, f"{self.root}/{key}" if key else self.root, self.endpoint_url)

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        with self._errors("read", key):
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            with contextlib.closing(response["Body"]) as body:
                # the headers give the size: an oversized body is closed unread
                _check_size(self.uri(key), int(response["ContentLength"]), max_bytes)
                return body.read()

    def write_bytes(self, key: str, data: bytes) -> str:
        # one PutObject request: S3 stores the whole body or nothing (never a multipart remnant)
        with self._errors("write", key):
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=bytes(data))
        return self.uri(key)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        # S3 conditional write: If-None-Match "*" makes the PUT fail with 412 when the key exists
        try:
            with self._errors("write", key):
                self._client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=bytes(data), IfNoneMatch="*"
                )
        except StorageError as exc:
            if _s3.is_precondition_failure(exc.__cause__):
                return False
            raise
        return True

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        paginator = self._client.get_paginator("list_objects_v2")
        keys = []
        with self._errors("list", prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=root + prefix):
                keys.extend(entry["Key"][len(root) :] for entry in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def size(self, key: str) -> int:
        with self._errors("stat", key):
            return int(self._client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])

    def uri(self, key: str = "") -> str:
        return str(ParsedURI("s3", self.bucket, self._key(key))) if key else self.root

    def __repr__(self) -> str:
        return f"S3Store({self.root!r}, endpoint_url={self.endpoint_url!r})"


def open_store(uri: str, *, endpoint_url: str | None = None, region: str | None = None) -> ObjectStore:
    """Open the store rooted at ``uri`` (local folder, ``file://`` or ``s3://bucket/prefix``).

    >>> store = open_store("s3://audits/out")          # endpoint/credentials from AWS config
    >>> store.write_bytes("runs/run_id=r1/run.json", b"{}")
    's3://audits/out/runs/run_id=r1/run.json'
    """
    parsed = parse_uri(uri)
    if parsed.scheme == "s3":
        return S3Store(parsed.bucket, parsed.path, endpoint_url=endpoint_url, region=region)
    return LocalStore(parsed.path)


@dataclass(frozen=True)
class FolderListing:
    """The files directly in a folder or S3 prefix (absolute URIs, sorted) and its subfolder count.

    ``truncated``: the listing stopped after ``limit`` files and more are there (``files`` is then a part).
    """

    files: tuple[str, ...]
    subfolders: int
    truncated: bool


def _list_local_folder(path: str, limit: int) -> FolderListing:
    files, subfolders = [], 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():  # follows links: a linked folder is a subfolder, not read
                    subfolders += 1
                else:  # files, links, FIFOs: the read of each decides
                    files.append(entry.path)
                    if len(files) > limit:
                        break
    except FileNotFoundError as exc:
        raise ObjectNotFound(f"no such folder: {path}") from exc
    except NotADirectoryError as exc:
        raise ObjectNotFound(f"no such folder: {path} is a file") from exc
    return FolderListing(tuple(sorted(files)[:limit]), subfolders, len(files) > limit)


def _list_s3_folder(client: Any, folder: ParsedURI, limit: int) -> FolderListing:
    prefix = f"{folder.path}/" if folder.path else ""
    files, subfolders = [], 0
    with _s3.translate_errors("list", f"{folder}/", _s3.client_endpoint(client)):
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=folder.bucket, Prefix=prefix, Delimiter="/"
        )
        for page in pages:
            subfolders += len(page.get("CommonPrefixes", []))
            for entry in page.get("Contents", []):
                name = entry["Key"][len(prefix) :]
                if name and not name.startswith("."):  # '' is a console's folder marker
                    files.append(str(ParsedURI("s3", folder.bucket, entry["Key"])))
            if len(files) > limit:
                break
    return FolderListing(tuple(sorted(files)[:limit]), subfolders, len(files) > limit)


class StoreCache:
    """Reads objects by absolute URI, reusing one boto3 client for every bucket.

    Building a boto3 client costs tens of milliseconds; a worker reading thousands of images keeps one
    ``StoreCache`` instead of calling ``open_store`` per image.
    """

    def __init__(self, *, endpoint_url: str | None = None, region: str | None = None) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self._client: Any = None

    def locate(self, uri: str) -> tuple[ObjectStore, str]:
        """Split ``uri`` into a store (bucket root or parent folder) and the key inside it."""
        parsed = parse_uri(uri)
        if parsed.scheme == "s3":
            if not parsed.path:
                raise StorageError(f"{uri!r} names a bucket, not an object; expected s3://bucket/key")
            return S3Store(parsed.bucket, client=self._s3_client()), parsed.path
        folder, name = os.path.split(parsed.path)
        return LocalStore(folder), name

    def _s3_client(self) -> Any:
        if self._client is None:
            self._client = _s3.make_client(self.endpoint_url, self.region)
        return self._client

    def read_uri(self, uri: str, *, max_bytes: int | None = None) -> bytes:
        """Return the bytes of the object at ``uri`` (``ObjectTooLarge`` over ``max_bytes``, unread)."""
        store, key = self.locate(uri)
        return store.read_bytes(key, max_bytes=max_bytes)

    def list_folder(self, uri: str, *, limit: int) -> FolderListing:
        """The files directly in the local folder or S3 prefix ``uri``, at most ``limit`` of them.

        Names starting with '.' are skipped (hidden files, in-flight writes); subfolders are only counted.
        A missing local folder is ``ObjectNotFound``; an S3 prefix without objects lists as empty.
        """
        parsed = parse_uri(uri)
        if parsed.scheme == "s3":
            return _list_s3_folder(self._s3_client(), parsed, limit)
        return _list_local_folder(parsed.path, limit)


def read_uri(uri: str, *, endpoint_url: str | None = None, region: str | None = None) -> bytes:
    """Return the bytes at ``uri`` (one-off; use ``StoreCache`` in loops)."""
    return StoreCache(endpoint_url=endpoint_url, region=region).read_uri(uri)
