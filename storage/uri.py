"""URIs and object keys: local paths, ``file://`` URIs and ``s3://bucket/key``.

Canonical forms (what ``normalize_uri`` returns and what lands in the output tables):
local objects are absolute POSIX paths (``/data/x.png``), S3 objects are ``s3://bucket/key``.
Keys inside a store are relative and '/'-separated, without ``.`` or ``..`` segments.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

from storage.errors import InvalidURIError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SUPPORTED = "local paths, file:// URIs and s3://bucket/key"


@dataclass(frozen=True)
class ParsedURI:
    """A URI split into parts. ``path`` is an absolute path (file) or a key without leading '/' (s3)."""

    scheme: Literal["file", "s3"]
    bucket: str
    path: str

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.path}" if self.path else f"s3://{self.bucket}"
        return self.path


def parse_uri(uri: str) -> ParsedURI:
    """Parse a local path, ``file://`` URI or ``s3://`` URI; relative local paths become absolute.

    >>> parse_uri("s3://scans/cxr/a.png")
    ParsedURI(scheme='s3', bucket='scans', path='cxr/a.png')
    """
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidURIError(f"URI must be a non-empty string, got {uri!r}; allowed: {_SUPPORTED}")
    if "\x00" in uri:
        raise InvalidURIError(f"URI {uri!r} contains a NUL byte")
    match = _SCHEME.match(uri)
    if match is None:
        return ParsedURI("file", "", os.path.abspath(uri))
    scheme = match.group(1).lower()
    if scheme == "file":
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise InvalidURIError(
                f"file URI {uri!r} names host {parts.netloc!r}; only local files are allowed"
            )
        return ParsedURI("file", "", os.path.abspath(unquote(parts.path) or "/"))
    if scheme == "s3":
        rest = uri[len(match.group(0)) :]
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise InvalidURIError(f"S3 URI {uri!r} has no bucket; expected s3://bucket/key")
        return ParsedURI("s3", bucket, _normalize_s3_key(key, uri))
    raise InvalidURIError(f"unsupported URI scheme {scheme!r} in {uri!r}; allowed: {_SUPPORTED}")


def _normalize_s3_key(key: str, uri: str) -> str:
    if not key.strip("/"):
        return ""
    normalized = posixpath.normpath(key.lstrip("/"))
    if normalized == ".." or normalized.startswith("../"):
        raise InvalidURIError(f"S3 URI {uri!r} climbs above its bucket with '..'")
    return "" if normalized == "." else normalized


def normalize_uri(uri: str) -> str:
    """Return the canonical form: absolute path for local objects, ``s3://bucket/key`` for S3."""
    return str(parse_uri(uri))


def is_s3_uri(uri: str) -> bool:
    """True for ``s3://`` URIs (case-insensitive scheme)."""
    return uri[:5].lower() == "s3://"


def is_absolute_uri(ref: str) -> bool:
    """True when ``ref`` has a scheme or is an absolute local path (needs no base to resolve)."""
    return bool(_SCHEME.match(ref)) or ref.startswith("/")


def parent_uri(uri: str) -> str:
    """The folder (local) or prefix (S3) that contains ``uri``."""
    parsed = parse_uri(uri)
    if parsed.scheme == "s3":
        return str(ParsedURI("s3", parsed.bucket, posixpath.dirname(parsed.path)))
    return os.path.dirname(parsed.path)


def uri_name(uri: str) -> str:
    """The last path component of ``uri`` ('' for a bucket root)."""
    return posixpath.basename(parse_uri(uri).path)


def resolve_uri(ref: str, base_dir: str) -> str:
    """Resolve ``ref`` (absolute URI, absolute path, or path relative to ``base_dir``) to canonical form.

    A relative ``ref`` never leaves an S3 bucket; locally '..' is allowed (it is just a path).

    >>> resolve_uri("img/a.png", "s3://scans/manifests")
    's3://scans/manifests/img/a.png'
    """
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidURIError(f"cannot resolve an empty reference against {base_dir!r}")
    if is_absolute_uri(ref):
        return normalize_uri(ref)
    base = parse_uri(base_dir)
    if base.scheme == "s3":
        return str(ParsedURI("s3", base.bucket, _normalize_s3_key(posixpath.join(base.path, ref), ref)))
    return os.path.normpath(os.path.join(base.path, ref))


def validate_key(key: str) -> str:
    """Check that ``key`` is a relative '/'-separated key without '.', '..' or empty segments."""
    if not isinstance(key, str) or not key:
        raise InvalidURIError(f"object key must be a non-empty string, got {key!r}")
    if "\\" in key or "\x00" in key:
        raise InvalidURIError(f"object key {key!r} contains a backslash or NUL; use '/' as separator")
    if key.startswith("/"):
        raise InvalidURIError(f"object key {key!r} must be relative (no leading '/')")
    bad = [segment for segment in key.split("/") if segment in ("", ".", "..")]
    if bad:
        raise InvalidURIError(
            f"object key {key!r} has an empty, '.' or '..' segment; keys stay inside their root"
        )
    return key


def join_key(*parts: str) -> str:
    """Join key parts with '/', dropping slashes at the seams, and validate the result.

    >>> join_key("answers/", "run_id=r1", "part-00000.parquet")
    'answers/run_id=r1/part-00000.parquet'
    """
    return validate_key("/".join(part.strip("/") for part in parts if part.strip("/")))


def join_uri(base: str, *parts: str) -> str:
    """Append key parts to a folder URI: ``join_uri("s3://b/out", "runs")`` → ``s3://b/out/runs``."""
    parsed = parse_uri(base)
    key = join_key(*parts)
    if parsed.scheme == "s3":
        return str(ParsedURI("s3", parsed.bucket, posixpath.join(parsed.path, key) if parsed.path else key))
    return os.path.join(parsed.path, *key.split("/"))
