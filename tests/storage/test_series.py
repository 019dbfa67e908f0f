"""DICOM series as volumes: order from positions, the checks that refuse a broken series, CT and grey
windows, sampling and labels, confinement. Series are built in the test (``make_series``), 16x16 pixels."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
from PIL import Image

from storage import (
    CorruptImage,
    DuplicateSlices,
    EmptySeries,
    ImageDecodeError,
    InconsistentOrientation,
    InconsistentSliceSize,
    InconsistentSpacing,
    InputNotAllowed,
    InputScope,
    ManifestItem,
    MixedSeries,
    MultiFrameImage,
    SeriesTooLong,
    StoreCache,
    UnorderableSeries,
    VolumeError,
    read_study,
)


def _ct_volume(n: int, size: int = 16) -> np.ndarray:
    """Stored values whose Hounsfield units (rescale 1, -1024) are 20 * slice index: R rises with the index."""
    return np.stack([np.full((size, size), 1024 + 20 * k, dtype=np.int16) for k in range(n)])


def _write(folder, files, *, shuffle: bool = True):
    """Write the files into ``folder`` under names that do not follow slice order; the written paths."""
    folder.mkdir(parents=True, exist_ok=True)
    order = list(range(len(files)))
    if shuffle:
        random.Random(7).shuffle(order)
    paths = []
    for written, k in enumerate(order):
        path = folder / f"{written:03d}-{files[k][0]}"
        path.write_bytes(files[k][1])
        paths.append(path)
    return paths


def _study(tmp_path, *uris, labels=None, **options):
    item = ManifestItem("s", tuple(str(uri) for uri in uris), "Q", None, None, {}, 1, labels)
    return read_study(item, InputScope(str(tmp_path / "m.csv")), StoreCache(), max_pixels=10_000, **options)


def _red(study) -> list[int]:
    return [int(np.asarray(s.image)[0, 0, 0]) for s in study]


def _window(hounsfield: np.ndarray, low: float, high: float) -> np.ndarray:
    """The window written out: low..high onto 0..255, clipped, rounded half to even."""
    return np.rint(np.clip((hounsfield - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def test_ct_slices_show_three_hounsfield_windows(tmp_path, make_series):
    hounsfield = np.array([-2000, -1024, -135, 0, 40, 80, 215, 1024, 3000], dtype=float)
    slope, intercept = 2.0, -1024.0
    volume = np.zeros((3, 16, 16), dtype=np.int16)  # stored 0 is -1024 HU
    volume[:, 0, : len(hounsfield)] = (hounsfield - intercept) / slope
    _write(tmp_path / "ct", make_series(volume, rescale=(slope, intercept)))
    first = _study(tmp_path, tmp_path / "ct")[0]
    row = np.asarray(first.image)[0, : len(hounsfield)]
    stored_hounsfield = volume[0, 0, : len(hounsfield)] * slope + intercept  # -2000 HU is stored as -1024
    for channel, (low, high) in enumerate([(-1024, 1024), (-135, 215), (0, 80)]):
        np.testing.assert_array_equal(row[:, channel], _window(stored_hounsfield, low, high))
    assert row[4].tolist() == [132, 128, 128]  # 40 HU: mid soft-tissue and mid brain window
    assert first.image.info["window"] == "ct_hounsfield" and first.image.info["original_size"] == (16, 16)


def test_order_comes_from_positions_not_names_or_instance_numbers(tmp_path, make_series):
    n = 12
    numbers = random.Random(3).sample(range(1, n + 1), n)
    files = make_series(_ct_volume(n), rescale=(1, -1024), instance_numbers=numbers)
    paths = _write(tmp_path / "ct", files)
    study = _study(tmp_path, f"{tmp_path}/ct/")
    assert _red(study) == sorted(_red(study)) and len(set(_red(study))) == n
    assert [s.slice_index for s in study] == list(range(n)) and {s.n_slices for s in study} == {n}
    info = study[0].image.info
    assert (info["slice_order"], info["orientation"], info["slice_spacing"]) == ("position", "axial", 2.5)
    assert [s.image.info["slice_position"] for s in study] == pytest.approx([100 + 2.5 * k for k in range(n)])
    by_name = {path.name.split("-", 1)[1]: str(path) for path in paths}
    assert [s.image.info["slice_uri"] for s in study] == [by_name[f"IM{k:04d}.dcm"] for k in range(n)]
    assert {s.uri for s in study} == {f"{tmp_path}/ct/"}


TILT = math.radians(20)


@pytest.mark.parametrize(
    ("orientation", "stack", "plane", "tilt"),
    [
        ((1, 0, 0, 0, math.cos(TILT), math.sin(TILT)), (0, 0, 1), "axial", 20.0),  # gantry tilt
        ((0, 1, 0, 0, 0, -1), None, "sagittal", 0.0),
        ((math.cos(math.pi / 4), math.sin(math.pi / 4), 0, 0, 0, -1), None, "oblique", 0.0),
    ],
)
def test_tilted_sagittal_and_oblique_stacks_are_ordered_along_the_normal(
    tmp_path, make_series, orientation, stack, plane, tilt
):
    files = make_series(_ct_volume(9), rescale=(1, -1024), orientation=orientation, stack=stack)
    _write(tmp_path / "s", files)
    study = _study(tmp_path, tmp_path / "s")  # a local folder needs no trailing '/'
    assert _red(study) == sorted(_red(study)) and len(set(_red(study))) == 9
    info = study[0].image.info
    assert info["orientation"] == plane and info["stack_tilt_degrees"] == pytest.approx(tilt, abs=0.01)
    normal = np.cross(orientation[:3], orientation[3:])
    assert info["slice_normal"] == pytest.approx(tuple(normal), abs=1e-5)


def test_a_missing_slice_is_inconsistent_spacing(tmp_path, make_series):
    files = make_series(_ct_volume(10), rescale=(1, -1024))
    del files[5]
    _write(tmp_path / "ct", files)
    with pytest.raises(InconsistentSpacing) as raised:
        _study(tmp_path, tmp_path / "ct")
    message = str(raised.value)
    assert "between slice 5" in message and "and slice 6" in message
    assert "is 5.000 mm, the median gap is 2.500 mm" in message and "within 10%" in message


def test_two_series_in_one_folder_are_refused_naming_both(tmp_path, make_series):
    first = make_series(_ct_volume(6), series_uid="1.2.3.6")
    second = make_series(_ct_volume(4), series_uid="1.2.3.4", origin=(0, 0, 300))
    _write(tmp_path / "mixed", first + [(f"B{name}", data) for name, data in second])
    with pytest.raises(MixedSeries) as raised:
        _study(tmp_path, tmp_path / "mixed")
    assert "2 series (SeriesInstanceUID: 1.2.3.6 (6 files), 1.2.3.4 (4 files))" in str(raised.value)


def test_an_over_long_series_is_refused_before_a_file_is_read(tmp_path, make_series):
    _write(tmp_path / "ct", make_series(_ct_volume(6)))
    (tmp_path / "ct" / "garbage.dcm").write_bytes(b"not a DICOM file")
    with pytest.raises(SeriesTooLong, match=r"more than 5 files; allowed: max_series_files=5"):
        _study(tmp_path, tmp_path / "ct", max_series_files=5)
    with pytest.raises(CorruptImage, match=r"garbage\.dcm"):  # read, the garbage would have failed
        _study(tmp_path, tmp_path / "ct", max_series_files=7)


def _localizer(ds, k):
    if k == 2:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]


def _multi_frame(ds, k):
    if k == 1:
        ds.NumberOfFrames = 2


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"edit": _localizer}, InconsistentOrientation, "share one orientation"),
        (
            {"positions": [(0, 0, 0), (0, 0, 2.5), (0, 0, 2.5), (0, 0, 5)]},
            DuplicateSlices,
            "both at 2.500 mm",
        ),
        ({"geometry": False, "instance_numbers": [1, 2, None, 4]}, UnorderableSeries, "1 of 4 also lack"),
        (
            {"geometry": False, "instance_numbers": [1, 2, 2, 3]},
            DuplicateSlices,
            "both have InstanceNumber 2",
        ),
        ({"edit": _multi_frame}, MultiFrameImage, "single-frame files"),
    ],
)
def test_broken_series_are_named_errors(tmp_path, make_series, options, error, message):
    _write(tmp_path / "s", make_series(_ct_volume(4), **options))
    with pytest.raises(error, match=message):
        _study(tmp_path, tmp_path / "s")


def test_slices_of_different_sizes_and_empty_folders(tmp_path, make_series):
    files = make_series(_ct_volume(3), series_uid="1.2.3") + make_series(
        _ct_volume(1, size=8), series_uid="1.2.3"
    )
    _write(tmp_path / "sizes", files)
    with pytest.raises(InconsistentSliceSize, match=r"16x16 \(3 files.*8x8 \(1 files"):
        _study(tmp_path, tmp_path / "sizes")
    (tmp_path / "study" / "series-1").mkdir(parents=True)
    with pytest.raises(EmptySeries, match=r"only 1 subfolder\(s\), which are not read"):
        _study(tmp_path, f"{tmp_path}/study/")


def test_instance_numbers_order_a_series_without_geometry(tmp_path, make_series):
    numbers = [3, 1, 4, 2]  # slice k's InstanceNumber: the order is 1, 3, 0, 2
    _write(
        tmp_path / "s",
        make_series(_ct_volume(4), rescale=(1, -1024), geometry=False, instance_numbers=numbers),
    )
    study = _study(tmp_path, tmp_path / "s")
    red = _red(study)
    assert red == [sorted(red)[k] for k in (1, 3, 0, 2)]
    assert study[0].image.info["slice_order"] == "instance_number"


def test_a_non_ct_series_has_one_percentile_window_for_the_volume(tmp_path, make_series):
    rng = np.random.default_rng(0)
    volume = np.stack([100 * k + rng.integers(0, 50, size=(16, 16)) for k in range(10)]).astype(np.uint16)
    _write(tmp_path / "mr", make_series(volume, modality="MR"))
    study = _study(tmp_path, tmp_path / "mr", slices_per_volume=5)
    sampled = volume[[0, 2, 4, 7, 9]].astype(float)
    low, high = np.percentile(sampled, [0.5, 99.5])
    for image, values in zip((s.image for s in study), sampled, strict=True):
        np.testing.assert_array_equal(np.asarray(image)[..., 1], _window(values, low, high))
        assert image.info["window"] == "volume_percentile" and image.info["modality"] == "MR"
    means = [np.asarray(s.image).mean() for s in study]
    assert means == sorted(means) and means[0] < 20 < 235 < means[-1]  # not stretched slice by slice
    _write(tmp_path / "mono1", make_series(volume, modality="MR", photometric="MONOCHROME1"))
    inverted = _study(tmp_path, tmp_path / "mono1", slices_per_volume=5)
    np.testing.assert_array_equal(np.asarray(inverted[0].image), 255 - np.asarray(study[0].image))


def test_a_non_ct_series_shown_through_its_own_window_when_every_slice_states_the_same(tmp_path, make_series):
    volume = np.stack([np.full((16, 16), 40 * k, dtype=np.uint16) for k in range(8)])

    def window(center, width):
        def edit(ds, k):
            ds.WindowCenter, ds.WindowWidth = center(k), width

        return edit

    _write(tmp_path / "own", make_series(volume, modality="MR", edit=window(lambda k: 150, 200)))
    study = _study(tmp_path, tmp_path / "own")
    assert {s.image.info["window"] for s in study} == {"dicom_window"}
    assert study[0].image.info["window_values"] == ((50.0, 250.0),)
    greys = [int(np.asarray(s.image)[0, 0, 0]) for s in study]  # 0, 40, ... 280 through 50..250
    np.testing.assert_array_equal(greys, _window(np.arange(8) * 40.0, 50.0, 250.0))
    assert greys[:2] == [0, 0] and greys[-1] == 255
    _write(tmp_path / "per-slice", make_series(volume, modality="MR", edit=window(lambda k: 100 + k, 200)))
    assert _study(tmp_path, tmp_path / "per-slice")[0].image.info["window"] == "volume_percentile"


def test_forty_slices_sampled_to_eight_keep_their_place_in_the_labels(tmp_path, make_series):
    _write(tmp_path / "ct", make_series(_ct_volume(40), rescale=(1, -1024)))
    (tmp_path / "a.png").write_bytes(_png())
    study = _study(
        tmp_path, tmp_path / "a.png", tmp_path / "ct", labels=("current", "prior"), slices_per_volume=8
    )
    assert [s.group for s in study] == [0] + [1] * 8
    assert study[0].label == "current" and study[0].slice_index is None and study[0].n_slices is None
    assert [s.slice_index for s in study[1:]] == [0, 6, 11, 17, 22, 28, 33, 39]
    assert [s.label for s in study[1:4]] == [
        "prior, slice 1 of 40",
        "prior, slice 7 of 40",
        "prior, slice 12 of 40",
    ]
    assert _study(tmp_path, tmp_path / "ct", slices_per_volume=8)[-1].label == "slice 40 of 40"
    assert len(_study(tmp_path, tmp_path / "ct", slices_per_volume=85)) == 40  # fewer than asked: all


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 200).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_series_outside_the_manifests_folder_or_linked_out_is_refused(tmp_path, make_series):
    files = make_series(_ct_volume(3))
    outside = _write(tmp_path / "outside", files)
    batch = tmp_path / "batch"
    _write(batch / "ct", files)
    with pytest.raises(InputNotAllowed):
        _study(batch, tmp_path / "outside")  # the folder itself is refused before it is listed
    (batch / "ct" / ".DS_Store").write_bytes(b"hidden files are skipped")
    assert len(_study(batch, batch / "ct")) == 3
    (batch / "ct" / "IM9999.dcm").symlink_to(outside[0])
    with pytest.raises(InputNotAllowed):
        _study(batch, batch / "ct")  # a file linked out of the scope is refused when read
    (batch / "linked").symlink_to(tmp_path / "outside")
    with pytest.raises(InputNotAllowed):
        _study(batch, f"{batch}/linked/")


def test_series_errors_are_image_decode_errors():
    # the worker's per-item isolation and tasks.retry.DETERMINISTIC both go by ImageDecodeError
    errors = (EmptySeries, SeriesTooLong, MixedSeries, InconsistentOrientation, InconsistentSliceSize)
    errors += (DuplicateSlices, InconsistentSpacing, UnorderableSeries)
    assert all(issubclass(error, VolumeError) and issubclass(error, ImageDecodeError) for error in errors)
