"""Named exceptions of the storage layer.

Every message says what happened, with which value, and what is allowed. None of them ever carries a
secret: S3 errors name the setting to check (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE`` ...), never its value.
The flow turns these into error rows; ``type(exc).__name__`` is the ``error_type`` column.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error raised by ``storage``."""


class InvalidURIError(StorageError, ValueError):
    """A URI or object key is malformed, escapes its root, or uses an unsupported scheme."""


class ObjectNotFound(StorageError):
    """The object (or its bucket) does not exist."""


class OutputNotWritable(StorageError):
    """The output root (or a folder under it) cannot be written: read-only, a file, no permission."""


class CredentialsError(StorageError):
    """The object store rejected or could not find credentials."""


class StorageConnectionError(StorageError):
    """The object store endpoint could not be reached."""


class ManifestError(StorageError):
    """The manifest as a whole is unusable (unreadable, unknown format, missing required columns)."""


class SchemaError(StorageError, ValueError):
    """Rows or a table do not match an output table's schema."""


class SchemaVersionError(StorageError, ValueError):
    """Outputs written by a vlm-audit of another schema version: not read, not resumed."""


class DuckDBExtensionError(StorageError):
    """A DuckDB extension needed for the URI (httpfs for s3://) cannot be loaded."""


class ImageDecodeError(StorageError):
    """An image could not be turned into pixels; ``name`` is the file it came from."""

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name


class UnsupportedImageFormat(ImageDecodeError):
    """The file's extension or encoding is not one we decode."""


class CorruptImage(ImageDecodeError):
    """The bytes are truncated or not a valid image of the claimed format."""


class ImageTooLarge(ImageDecodeError):
    """The header announces more pixels than allowed (decompression-bomb guard)."""


class MultiFrameImage(ImageDecodeError):
    """A multi-frame DICOM was given without choosing a frame, or the frame is out of range."""


class MissingPixelData(ImageDecodeError):
    """A DICOM file has no pixel data element."""


class InputNotAllowed(StorageError):
    """A manifest names an image or mask outside its own store that ``allowed_inputs`` does not cover."""


class NotARegularFile(StorageError):
    """A local object is a FIFO, device, directory or socket: only regular files are read."""


class ObjectTooLarge(StorageError):
    """An object is larger than the read allows (checked before its bytes are read)."""


class VolumeError(ImageDecodeError):
    """A DICOM series or NIfTI volume cannot be turned into ordered slices; ``name`` is its URI."""


class EmptySeries(VolumeError):
    """A series folder or prefix holds no files (subfolders are not read)."""


class SeriesTooLong(VolumeError):
    """A series holds more files than ``max_series_files`` (checked from the listing, before any read)."""


class MixedSeries(VolumeError):
    """The files of one series folder carry more than one SeriesInstanceUID."""


class InconsistentOrientation(VolumeError):
    """The slices of a series disagree on ImageOrientationPatient."""


class InconsistentSliceSize(VolumeError):
    """The slices of a series disagree on Rows x Columns."""


class DuplicateSlices(VolumeError):
    """Two slices of a series sit at the same position (or carry the same InstanceNumber)."""


class InconsistentSpacing(VolumeError):
    """The gaps between consecutive slice positions differ: a missing slice, or stacks mixed."""


class UnorderableSeries(VolumeError):
    """A series gives neither positions with orientations nor instance numbers for every slice."""
