"""Fixtures: a real S3-compatible HTTP server (moto) on 127.0.0.1, shared by the whole session.

Imported by tests/conftest.py, so tests/storage and tests/pipeline share one server. Requests
travel over real HTTP (boto3, pyarrow's C++ client, DuckDB), nothing is patched. Dummy credentials are set only inside fixtures,
through monkeypatch, and the developer's ~/.aws files are masked so no real account is ever used.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import boto3
import numpy as np
import pytest

S3_ACCESS_KEY_ID = "AKIAVLMAUDITFIXTURE0"
S3_SECRET_ACCESS_KEY = "vlm-audit-dummy-secret-7f3c9a"  # tests assert this never appears in messages
S3_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """A running moto server: its endpoint, the dummy credentials ``s3_env`` sets, an auth switch."""

    endpoint_url: str
    access_key_id: str = S3_ACCESS_KEY_ID
    secret_access_key: str = field(default=S3_SECRET_ACCESS_KEY, repr=False)
    region: str = S3_REGION

    def require_auth(self, enabled: bool) -> None:
        # moto checks signatures and IAM policies only after INITIAL_NO_AUTH_ACTION_COUNT requests
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset-auth",
            data=b"0" if enabled else b"inf",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["status"] == "ok"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 (and IAM) server on a free loopback port for the session."""
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> S3Server:
    """Point the standard AWS settings (environment only) at the test server with dummy credentials."""
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    masked = tmp_path_factory.mktemp("aws-home")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(masked / "config"))  # missing files: no real profiles
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(masked / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no 1 s instance-metadata probe
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_access_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)  # honoured by boto3 itself
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: S3Server) -> str:
    """A fresh, empty bucket per test; returns ``s3://<name>``."""
    name = f"vlm-audit-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"


@dataclass(frozen=True)
class IamKey:
    access_key_id: str
    secret_access_key: str


@pytest.fixture
def s3_auth(s3_bucket: str, s3_env: S3Server) -> Iterator[IamKey]:
    """IAM authentication on for one test; yields a valid key that may do s3:* (all others are refused)."""
    iam = boto3.client("iam")
    user = f"auditor-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="s3-all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    s3_env.require_auth(True)
    try:
        yield IamKey(key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        s3_env.require_auth(False)


@pytest.fixture
def make_dicom() -> Callable[..., bytes]:
    """Build a small DICOM file in memory: ``make_dicom(pixels, photometric=..., window=(c, w), ...)``.

    ``pixels`` is (rows, cols) or (frames, rows, cols) as uint16/int16, or (rows, cols, 3) uint8 for
    ``photometric="RGB"``. ``rows``/``columns`` override the header (to fake huge images),
    ``pixel_data=False`` omits the PixelData element, ``raw=True`` writes a bare dataset (no preamble,
    no file meta, implicit VR) as old archives do, and ``edit`` changes the dataset just before it is
    written (LUT sequences, raw header strings, a compressed transfer syntax).
    """
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    def build(
        pixels: np.ndarray,
        *,
        photometric: str = "MONOCHROME2",
        window: tuple[float, float] | None = None,
        rescale: tuple[float, float] | None = None,
        pixel_data: bool = True,
        rows: int | None = None,
        columns: int | None = None,
        raw: bool = False,
        edit: Callable[[Dataset], None] | None = None,
    ) -> bytes:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "DX"
        colour = photometric == "RGB"
        multi_frame = pixels.ndim == 3 and not colour
        ds.Rows = rows if rows is not None else pixels.shape[-3 if colour else -2]
        ds.Columns = columns if columns is not None else pixels.shape[-2 if colour else -1]
        if multi_frame:
            ds.NumberOfFrames = pixels.shape[0]
        ds.SamplesPerPixel = 3 if colour else 1
        if colour:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        if pixel_data:
            ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        if edit is not None:
            edit(ds)
        buffer = io.BytesIO()
        if raw:
            del ds.file_meta
            dcmwrite(buffer, ds, implicit_vr=True, little_endian=True)
        else:
            ds.save_as(buffer, enforce_file_format=True)  # preamble + 'DICM' + file meta
        return buffer.getvalue()

    return build


AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # ImageOrientationPatient: rows along +x, columns along +y (LPS)


@pytest.fixture
def make_series(make_dicom) -> Callable[..., list[tuple[str, bytes]]]:
    """Build a DICOM series in memory, one single-frame file per slice, in slice order.

    ``make_series(volume)`` with ``volume`` [slices, rows, columns] (int16 or uint16 stored values) returns
    ``[(file name, bytes)]``; slice k sits at ``origin + k * spacing * stack`` (``stack`` defaults to the
    slice normal, row x column of ``orientation``). ``positions`` replaces the computed positions (None
    entries omit the element), ``geometry=False`` omits ImagePositionPatient and ImageOrientationPatient,
    ``instance_numbers`` gives InstanceNumber per slice (None: k + 1; a None entry omits it),
    ``rescale`` is (slope, intercept), ``edit(ds, k)`` changes slice k's dataset before it is written.
    """
    from pydicom.uid import CTImageStorage, generate_uid

    def build(
        volume: np.ndarray,
        *,
        modality: str = "CT",
        rescale: tuple[float, float] | None = None,
        orientation: tuple[float, ...] = AXIAL,
        spacing: float = 2.5,
        origin: tuple[float, float, float] = (-20.0, -20.0, 100.0),
        stack: tuple[float, float, float] | None = None,
        positions: list | None = None,
        geometry: bool = True,
        instance_numbers: list | None = None,
        series_uid: str | None = None,
        photometric: str = "MONOCHROME2",
        edit: Callable | None = None,
    ) -> list[tuple[str, bytes]]:
        uid = series_uid or generate_uid()
        normal = np.cross(orientation[:3], orientation[3:])
        direction = np.asarray(stack if stack is not None else normal, dtype=float)
        if positions is None:
            positions = [tuple(np.asarray(origin) + k * spacing * direction) for k in range(len(volume))]
        numbers = instance_numbers if instance_numbers is not None else list(range(1, len(volume) + 1))
        files = []
        for k, pixels in enumerate(volume):

            def slice_header(ds, k=k):
                ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
                ds.Modality, ds.SeriesInstanceUID = modality, uid
                if geometry:
                    ds.ImageOrientationPatient = [round(float(v), 6) for v in orientation]
                    if positions[k] is not None:
                        ds.ImagePositionPatient = [round(float(v), 4) for v in positions[k]]
                if numbers[k] is not None:
                    ds.InstanceNumber = numbers[k]
                if edit is not None:
                    edit(ds, k)

            data = make_dicom(pixels, photometric=photometric, rescale=rescale, edit=slice_header)
            files.append((f"IM{k:04d}.dcm", data))
        return files

    return build
