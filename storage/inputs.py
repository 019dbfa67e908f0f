"""Where a manifest's images and masks may be read from, and how large they may be.

A manifest is input from whoever wrote it (with the upload-triggered deployment: whoever can upload
one), so the files it names are confined to the manifest's own store: the same bucket for an
``s3://`` manifest, the manifest's folder and below for a local one. Local paths are compared after
following symbolic links (``os.path.realpath``), so a ``../`` or a link pointing out is refused too.
Anything else (another bucket, an absolute local path, a ``file://`` URI) is read only when a prefix in
``allowed_inputs`` covers it. A prefix is a folder: ``s3://scans/cxr`` covers ``s3://scans/cxr/a.png``,
not ``s3://scans/cxr-private/a.png``. A DICOM series folder or prefix is checked before it is listed,
and each file in it again when it is read, so a link inside the folder cannot lead out either.

The refusal is decided from the URI and the links on the way, before the target is opened, and its
message is the same whether or not the target exists, so a manifest cannot probe the worker's files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from storage.errors import InputNotAllowed, InvalidURIError, ObjectTooLarge
from storage.objects import FolderListing, StoreCache
from storage.uri import ParsedURI, parent_uri, parse_uri

DEFAULT_MAX_IMAGE_BYTES = 512 * 2**20  # a 16-bit 8k x 8k DICOM is ~128 MiB; 512 MiB leaves room for more


def input_prefix(prefix: str) -> str:
    """Check an ``allowed_inputs`` entry and return its canonical form (``s3://bucket[/key]`` or a path).

    >>> input_prefix("file:///data/scans/")
    '/data/scans'
    """
    if not isinstance(prefix, str) or not (prefix.startswith("/") or "://" in prefix):
        raise InvalidURIError(
            f"allowed_inputs entry {prefix!r} must be absolute: s3://bucket[/prefix], /folder or file:///folder"
        )
    return str(parse_uri(prefix))  # no trailing '/': normpath and abspath drop it


def _covers(folder: ParsedURI, target: ParsedURI) -> bool:
    """True when ``target`` lies in ``folder`` (a bucket, a key prefix or a local folder), same scheme."""
    if folder.scheme == "s3":
        return folder.bucket == target.bucket and (
            not folder.path or target.path == folder.path or target.path.startswith(folder.path + "/")
        )
    return os.path.commonpath([folder.path, target.path]) == folder.path


def _real(parsed: ParsedURI) -> ParsedURI:
    """A local path with every symbolic link on the way resolved (the target need not exist)."""
    return ParsedURI("file", "", os.path.realpath(parsed.path))


@dataclass(frozen=True)
class InputScope:
    """The store a manifest's images and masks are read from, the extra prefixes allowed, the size cap.

    >>> scope = InputScope("s3://scans/batch-07/manifest.csv")
    >>> image = scope.read("s3://scans/cxr/a.png", StoreCache())    # same bucket: read
    >>> scope.read("/etc/passwd", StoreCache())                      # raises InputNotAllowed
    """

    manifest_uri: str
    allowed_inputs: tuple[str, ...] = ()
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_inputs", tuple(input_prefix(p) for p in self.allowed_inputs))

    @property
    def home(self) -> str:
        """The manifest's own store: ``s3://bucket`` or the manifest's folder."""
        manifest = parse_uri(self.manifest_uri)
        return f"s3://{manifest.bucket}" if manifest.scheme == "s3" else parent_uri(self.manifest_uri)

    def check(self, uri: str) -> str:
        """The URI to read for ``uri`` (a local one with its links resolved), or ``InputNotAllowed``."""
        target = parse_uri(uri)
        folders = [parse_uri(folder) for folder in (self.home, *self.allowed_inputs)]
        folders = [folder for folder in folders if folder.scheme == target.scheme]
        if target.scheme == "file" and folders:  # compare where the links lead, not how the path reads
            target, folders = _real(target), [_real(folder) for folder in folders]
        if any(_covers(folder, target) for folder in folders):
            return str(target)
        allowed = ", ".join(self.allowed_inputs) or "none"
        # names only what the manifest gave and the settings: nothing about the target itself
        raise InputNotAllowed(
            f"{uri} is outside the manifest's store {self.home} (links followed) and outside allowed_inputs "
            f"({allowed}); to read it, add a prefix that covers it to allowed_inputs "
            "(--allowed-inputs, comma-separated URI prefixes)"
        )

    def list_folder(self, uri: str, objects: StoreCache, *, limit: int) -> FolderListing:
        """The files directly in a folder or S3 prefix the manifest names (a DICOM series), if the scope
        allows the folder; ``StoreCache.list_folder`` has the rules. Read each file with `read`, which
        checks where its own links lead."""
        return objects.list_folder(self.check(uri), limit=limit)

    def read(self, uri: str, objects: StoreCache) -> bytes:
        """The bytes of an image or mask the manifest names, if the scope allows it and it is not too big."""
        try:
            return objects.read_uri(self.check(uri), max_bytes=self.max_image_bytes)
        except ObjectTooLarge as exc:
            raise ObjectTooLarge(f"{exc}; raise max_image_bytes (--max-image-bytes) to read it") from None
