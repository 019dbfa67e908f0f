"""read_study: NIfTI volumes (order and display from the affine, windows, bombs), mixed studies, S3."""

from __future__ import annotations

import gzip
import io

import boto3
import nibabel
import numpy as np
import pytest
from PIL import Image

from storage import (
    CorruptImage,
    ImageTooLarge,
    InputNotAllowed,
    InputScope,
    ManifestItem,
    ObjectNotFound,
    StoreCache,
    UnsupportedImageFormat,
    open_store,
    read_study,
)


def _nifti(volume: np.ndarray, affine: np.ndarray | None = None, *, compress: bool = False) -> bytes:
    data = nibabel.Nifti1Image(volume, np.diag([1.5, 1.5, 2.5, 1.0]) if affine is None else affine).to_bytes()
    return gzip.compress(data) if compress else data


def _ramp(n: int, shape: tuple[int, int] = (16, 12)) -> np.ndarray:
    """[x, y, slices] int16: slice k holds 10 * k everywhere, so brightness tells its place."""
    return np.stack([np.full(shape, 10 * k, dtype=np.int16) for k in range(n)], axis=-1)


def _study(manifest_uri: str, *uris: str, labels=None, objects: StoreCache | None = None, **options):
    item = ManifestItem("s", uris, "Q", None, None, {}, 1, labels)
    scope = InputScope(manifest_uri, max_image_bytes=options.pop("max_image_bytes", 2**20))
    return read_study(item, scope, objects or StoreCache(), max_pixels=10_000, **options)


def _means(study) -> list[float]:
    return [float(np.asarray(s.image).mean()) for s in study]


@pytest.mark.parametrize("compress", [False, True])
def test_nifti_slices_follow_the_third_axis_in_patient_order(tmp_path, compress):
    name = "head.nii.gz" if compress else "head.nii"
    (tmp_path / name).write_bytes(_nifti(_ramp(10), compress=compress))
    study = _study(str(tmp_path / "m.csv"), str(tmp_path / name), slices_per_volume=4)
    assert [s.slice_index for s in study] == [0, 3, 6, 9] and study[1].label == "slice 4 of 10"
    assert _means(study) == sorted(_means(study)) and _means(study)[0] == 0 and _means(study)[-1] == 255
    info = study[0].image.info
    assert (info["source_format"], info["orientation"], info["slice_axis_reversed"]) == (
        "NIfTI",
        "axial",
        False,
    )
    assert info["window"] == "volume_percentile" and info["slice_spacing"] == 2.5
    assert study[0].image.size == (16, 12) == info["original_size"]  # columns along x, rows along y


def test_a_flipped_third_axis_is_read_in_reverse(tmp_path):
    flipped = np.diag([1.5, 1.5, -2.5, 1.0])  # the third column points down (toward the feet)
    (tmp_path / "v.nii.gz").write_bytes(_nifti(_ramp(10), flipped, compress=True))
    study = _study(str(tmp_path / "m.csv"), str(tmp_path / "v.nii.gz"), slices_per_volume=4)
    assert _means(study) == sorted(_means(study), reverse=True)  # stored slice 9 is the lowest: slice 1
    assert study[0].image.info["slice_axis_reversed"] is True


def test_nifti_in_plane_display_matches_a_dicom_viewer(tmp_path):
    volume = np.zeros((16, 12, 3), dtype=np.int16)
    volume[0, 0, :] = 100  # x = 0 is the patient's far left (RAS), y = 0 the far posterior
    volume[15, 11, :] = 50  # far right, far anterior
    (tmp_path / "v.nii").write_bytes(_nifti(volume))
    pixels = np.asarray(_study(str(tmp_path / "m.csv"), str(tmp_path / "v.nii"))[0].image)[..., 0]
    # axial as DICOM shows it: the patient's right on the image's left, anterior at the top
    assert pixels[11, 15] == 255 and 0 < pixels[0, 0] < 255


def test_a_nifti_in_hounsfield_units_gets_the_ct_windows(tmp_path):
    volume = np.full((16, 12, 4), -1000, dtype=np.int16)
    volume[0, 0, :] = 40
    volume[1, 0, :] = 1000
    (tmp_path / "ct.nii.gz").write_bytes(_nifti(volume, compress=True))
    study = _study(str(tmp_path / "m.csv"), str(tmp_path / "ct.nii.gz"))
    pixels = np.asarray(study[0].image)
    assert study[0].image.info["window"] == "ct_hounsfield"
    assert pixels[11, 15].tolist() == [132, 128, 128] and pixels[0, 0].tolist() == [3, 0, 0]


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (
            gzip.compress(bytes(4 * 2**20)),
            ImageTooLarge,
            "decompresses to more than max_image_bytes=1,048,576",
        ),
        (gzip.compress(_nifti(_ramp(4)))[:-20], CorruptImage, "truncated"),
        (b"\x00" * 400, CorruptImage, "not a NIfTI-1 or NIfTI-2 file"),
        (_nifti(np.zeros((4, 4, 3, 2), dtype=np.int16)), UnsupportedImageFormat, r"shape \(4, 4, 3, 2\)"),
        (_nifti(_ramp(4))[:400], CorruptImage, "voxel data cannot be read"),
    ],
)
def test_broken_nifti_files_are_named_errors(tmp_path, data, error, message):
    (tmp_path / "v.nii.gz").write_bytes(data)
    with pytest.raises(error, match=message):
        _study(str(tmp_path / "m.csv"), str(tmp_path / "v.nii.gz"))


def test_a_study_mixes_images_and_volumes_in_manifest_order(tmp_path, make_series):
    buffer = io.BytesIO()
    Image.new("L", (20, 10), 90).save(buffer, format="PNG")
    (tmp_path / "prior.png").write_bytes(buffer.getvalue())
    (tmp_path / "mr.nii").write_bytes(_nifti(_ramp(5)))
    (tmp_path / "ct").mkdir()
    for name, data in make_series(np.zeros((3, 16, 16), dtype=np.int16)):
        (tmp_path / "ct" / name).write_bytes(data)
    uris = (str(tmp_path / "prior.png"), f"{tmp_path}/ct/", str(tmp_path / "mr.nii"))
    study = _study(str(tmp_path / "m.csv"), *uris, labels=("prior", "", "current"), slices_per_volume=2)
    assert [(s.group, s.label, s.slice_index, s.n_slices) for s in study] == [
        (0, "prior", None, None),
        (1, "slice 1 of 3", 0, 3),
        (1, "slice 3 of 3", 2, 3),
        (2, "current, slice 1 of 5", 0, 5),
        (2, "current, slice 5 of 5", 4, 5),
    ]
    assert [s.uri for s in study] == [uris[0], uris[1], uris[1], uris[2], uris[2]]
    assert study[0].image.mode == "RGB" and study[0].image.info["original_size"] == (20, 10)
    with pytest.raises(ValueError, match="slices_per_volume must be a positive integer, got 0"):
        _study(str(tmp_path / "m.csv"), *uris, slices_per_volume=0)


@pytest.mark.integration
def test_series_and_nifti_on_s3(s3_bucket, make_series):
    store = open_store(f"{s3_bucket}/study-1")
    volume = np.stack([np.full((16, 16), 1024 + 20 * k, dtype=np.int16) for k in range(6)])
    for index, (name, data) in enumerate(reversed(make_series(volume, rescale=(1, -1024)))):
        store.write_bytes(f"ct/{index}-{name}", data)  # keys in reverse slice order
    store.write_bytes("ct/.hidden", b"skipped")
    store.write_bytes("ct/sub/other.dcm", b"in a subfolder: not part of the series")
    store.write_bytes("mr.nii.gz", _nifti(_ramp(4), compress=True))
    manifest, objects = f"{s3_bucket}/study-1/m.csv", StoreCache()
    uris = (f"{s3_bucket}/study-1/ct/", f"{s3_bucket}/study-1/ct", f"{s3_bucket}/study-1/mr.nii.gz")
    study = _study(manifest, *uris, objects=objects, slices_per_volume=3)
    expected = [(0, 0), (0, 2), (0, 5), (1, 0), (1, 2), (1, 5), (2, 0), (2, 2), (2, 3)]  # 6 and 4 slices
    assert [(s.group, s.slice_index) for s in study] == expected
    red = [int(np.asarray(s.image)[0, 0, 0]) for s in study[:3]]
    assert red == sorted(red) and study[0].image.info["slice_uri"].startswith(f"{s3_bucket}/study-1/ct/")
    with pytest.raises(ObjectNotFound):  # neither an object nor a prefix of objects
        _study(manifest, f"{s3_bucket}/study-1/nothing", objects=objects)
    other = f"s3://{s3_bucket[5:]}-other"
    boto3.client("s3").create_bucket(Bucket=other[5:])
    with pytest.raises(InputNotAllowed):  # another bucket: refused before it is listed
        _study(manifest, f"{other}/ct/", objects=objects)
