import io
import re
import time

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from storage import (
    CorruptImage,
    ImageDecodeError,
    ImageTooLarge,
    MissingPixelData,
    MultiFrameImage,
    UnsupportedImageFormat,
    decode_image,
    image_format,
)
from tests.images import png_header_only


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _dicom_window_reference(value: float, center: float, width: float) -> int:
    """DICOM PS3.3 C.11.2.1.2.1, written out piecewise."""
    if value <= center - 0.5 - (width - 1) / 2:
        return 0
    if value > center - 0.5 + (width - 1) / 2:
        return 255
    return round(((value - (center - 0.5)) / (width - 1) + 0.5) * 255)


def test_png_rgb_round_trip_is_exact():
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    image = decode_image(_encode(Image.fromarray(pixels), "PNG"), "scans/a.PNG")
    assert image.mode == "RGB" and image.size == (7, 5)
    assert image.info["original_size"] == (7, 5) and image.info["source_format"] == "PNG"
    np.testing.assert_array_equal(np.asarray(image), pixels)


def test_png_16bit_is_stretched_not_clipped():
    pixels = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)
    image = decode_image(_encode(Image.fromarray(pixels), "PNG"), "a.png")
    gray = np.asarray(image)[..., 0]
    np.testing.assert_array_equal(gray, np.rint(pixels / 65535 * 255).astype(np.uint8))
    assert image.info["source_mode"].startswith("I")


def test_palette_png_and_jpeg():
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 10, 30] + [0] * 762)
    assert np.asarray(decode_image(_encode(palette, "PNG"), "p.png"))[0, 0].tolist() == [200, 10, 30]
    jpeg = decode_image(_encode(Image.new("RGB", (16, 8), (120, 60, 30)), "JPEG", quality=95), "x.jpeg")
    assert jpeg.size == (16, 8) and jpeg.info["source_format"] == "JPEG"
    assert np.abs(np.asarray(jpeg).astype(int) - [120, 60, 30]).max() <= 3


def _transparent_png(mode: str) -> tuple[bytes, np.ndarray]:
    """A 1x3 PNG: a transparent pixel hiding a colour, a half-transparent one, an opaque one; and the
    expected RGB over black."""
    if mode == "RGBA":
        rgba = np.array([[[255, 0, 0, 0], [200, 100, 50, 128], [10, 20, 30, 255]]], dtype=np.uint8)
        expected = np.rint(rgba[..., :3] * (rgba[..., 3:] / 255.0))
        return _encode(Image.fromarray(rgba, "RGBA"), "PNG"), expected
    if mode == "LA":
        la = np.array([[[250, 0], [200, 128], [40, 255]]], dtype=np.uint8)
        expected = np.repeat(np.rint(la[..., :1] * (la[..., 1:] / 255.0)), 3, axis=2)
        return _encode(Image.fromarray(la, "LA"), "PNG"), expected
    if mode == "P":  # palette entry 1 is the transparent one (tRNS), as GIF-style PNGs do it
        image = Image.fromarray(np.array([[1, 2, 1]], dtype=np.uint8), "P")
        image.putpalette([0, 0, 0, 200, 10, 30, 5, 6, 7] + [0] * 759)
        return _encode(image, "PNG", transparency=1), np.array([[[0, 0, 0], [5, 6, 7], [0, 0, 0]]])
    if mode == "I;16":  # a 16-bit grey PNG with a tRNS grey value
        values = np.array([[65535, 30000, 0]], dtype=np.uint16)
        data = _encode(Image.fromarray(values), "PNG", transparency=65535)
        return data, np.repeat(np.array([[[0], [np.rint(30000 / 65535 * 255)], [0]]]), 3, axis=2)
    # RGB with a tRNS colour key: pixels of exactly that colour are transparent
    rgb = np.array([[[255, 0, 255], [9, 8, 7], [255, 0, 255]]], dtype=np.uint8)
    data = _encode(Image.fromarray(rgb), "PNG", transparency=(255, 0, 255))
    return data, np.array([[[0, 0, 0], [9, 8, 7], [0, 0, 0]]])


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "RGB", "I;16"])
def test_transparency_is_composited_over_black(mode):
    data, expected = _transparent_png(mode)
    image = decode_image(data, f"{mode}.png")
    assert image.mode == "RGB" and image.info["source_mode"] == mode
    assert np.abs(np.asarray(image).astype(int) - expected).max() <= 1  # the hidden colour never shows


def test_truncated_png_names_the_file():
    data = _encode(
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG"
    )
    with pytest.raises(CorruptImage, match=r"cut\.png.*truncated or corrupt") as info:
        decode_image(data[: len(data) // 2], "cut.png")
    assert info.value.name == "cut.png"


@pytest.mark.parametrize(
    ("data", "name"),
    [(b"not an image at all", "x.png"), (_encode(Image.new("RGB", (4, 4)), "JPEG"), "jpeg-bytes.png")],
)
def test_garbage_or_mismatched_content(data, name):
    with pytest.raises(CorruptImage, match=re.escape(name)):
        decode_image(data, name)


@pytest.mark.parametrize("name", ["a.gif", "a.bmp", "noext"])
def test_unsupported_extension(name):
    with pytest.raises(UnsupportedImageFormat, match=r"allowed: \.dcm, \.dicom, \.jpeg, \.jpg, \.png"):
        decode_image(_encode(Image.new("RGB", (2, 2)), "PNG"), name)


def _with_dicm_at_128(fmt: str, pixels: np.ndarray) -> bytes:
    """A valid PNG (tEXt chunk) or JPEG (COM segment) whose bytes 128..131 read 'DICM'."""

    def encode(text: str) -> bytes:
        if fmt == "PNG":
            info = PngImagePlugin.PngInfo()
            info.add_text("k", text)
            return _encode(Image.fromarray(pixels), "PNG", pnginfo=info)
        return _encode(Image.fromarray(pixels), "JPEG", quality=95, comment=text.encode())

    start = encode("@" * 8).index(b"@" * 8)  # where the text lands
    data = encode("x" * (128 - start) + "DICM")
    assert data[128:132] == b"DICM"
    return data


@pytest.mark.parametrize(("fmt", "name"), [("PNG", "a.png"), ("JPEG", "a.jpg")])
def test_a_valid_signature_wins_over_dicm_at_byte_128(fmt, name):
    pixels = np.random.default_rng(3).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    data = _with_dicm_at_128(fmt, pixels)
    assert image_format(data, name) == fmt
    image = decode_image(data, name)
    assert image.info["source_format"] == fmt and image.size == (5, 6)
    if fmt == "PNG":
        np.testing.assert_array_equal(np.asarray(image), pixels)
    with pytest.raises(UnsupportedImageFormat, match="unsupported image extension"):
        image_format(data, "s3://pacs/study/1.2.840.1")  # no extension: the magic alone no longer decides


def test_bomb_png_rejected_from_header_fast():
    for width, height in [(20000, 20000), (10000, 6000)]:  # Pillow's own limit, then ours (60M > 50M)
        started = time.perf_counter()
        with pytest.raises(ImageTooLarge, match=r"bomb\.png"):
            decode_image(png_header_only(width, height), "bomb.png")
        assert time.perf_counter() - started < 0.5
    with pytest.raises(ImageTooLarge, match=r"20x20 = 400 pixels exceeds max_pixels=399"):
        decode_image(_encode(Image.new("RGB", (20, 20)), "PNG"), "small.png", max_pixels=399)
    assert decode_image(_encode(Image.new("RGB", (20, 20)), "PNG"), "small.png", max_pixels=400).size == (
        20,
        20,
    )


def test_dicom_window_and_rescale(make_dicom):
    raw = np.array([[0, 50, 100, 150], [200, 250, 300, 400]], dtype=np.uint16)
    slope, intercept, center, width = 2.0, -100.0, 300.0, 401.0
    image = decode_image(make_dicom(raw, window=(center, width), rescale=(slope, intercept)), "cxr.dcm")
    expected = [[_dicom_window_reference(v * slope + intercept, center, width) for v in row] for row in raw]
    np.testing.assert_array_equal(np.asarray(image)[..., 0], expected)
    assert image.info["window"] == (center, width) and image.info["original_size"] == (4, 2)
    assert np.asarray(image).shape == (2, 4, 3)


def test_dicom_minmax_and_monochrome1(make_dicom):
    raw = np.array([[0, 500, 1000]], dtype=np.uint16)
    mono2 = np.asarray(decode_image(make_dicom(raw), "a.dcm"))[0, :, 0]
    mono1 = np.asarray(decode_image(make_dicom(raw, photometric="MONOCHROME1"), "a.dicom"))[0, :, 0]
    np.testing.assert_array_equal(mono2, [0, 128, 255])
    np.testing.assert_array_equal(mono1, [255, 127, 0])


def test_dicom_signed_pixels(make_dicom):
    raw = np.array([[-1000, 0, 1000]], dtype=np.int16)
    gray = np.asarray(decode_image(make_dicom(raw, window=(0.0, 2001.0)), "ct.dcm"))[0, :, 0]
    np.testing.assert_array_equal(gray, [_dicom_window_reference(v, 0.0, 2001.0) for v in raw[0]])


def test_dicom_found_by_magic_without_extension(make_dicom):
    image = decode_image(make_dicom(np.array([[0, 10]], dtype=np.uint16)), "s3://pacs/study/1.2.840.1")
    assert image.info["source_format"] == "DICOM"


def test_dicom_raw_dataset_without_preamble(make_dicom):
    data = make_dicom(np.array([[0, 100]], dtype=np.uint16), raw=True)
    assert data[128:132] != b"DICM"
    np.testing.assert_array_equal(np.asarray(decode_image(data, "old.dcm"))[..., 0], [[0, 255]])
    with pytest.raises(UnsupportedImageFormat):
        decode_image(data, "old.bin")  # without the magic, only the extension says DICOM


@pytest.mark.parametrize("data", [b"", b"garbage bytes", b"\0" * 300])
def test_garbage_dcm_is_corrupt_not_missing_pixels(data):
    with pytest.raises(CorruptImage, match=r"junk\.dcm: not a DICOM file"):
        decode_image(data, "junk.dcm")


def test_dicom_rgb(make_dicom):
    pixels = np.random.default_rng(2).integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    image = decode_image(make_dicom(pixels, photometric="RGB"), "photo.dcm")
    np.testing.assert_array_equal(np.asarray(image), pixels)
    assert image.info["window"] == "none" and image.info["original_size"] == (4, 3)


def test_dicom_multi_frame_needs_a_frame(make_dicom):
    frames = np.zeros((3, 2, 3), dtype=np.uint16)
    for index in range(3):
        frames[index, 0, index] = 1000  # frame k is bright only at column k
    data = make_dicom(frames)
    with pytest.raises(MultiFrameImage, match=r"cine\.dcm: DICOM has 3 frames; pass frame=0\.\.2"):
        decode_image(data, "cine.dcm")
    with pytest.raises(MultiFrameImage, match="frame=3 is out of range"):
        decode_image(data, "cine.dcm", frame=3)
    gray = np.asarray(decode_image(data, "cine.dcm", frame=1))[..., 0]
    np.testing.assert_array_equal(gray, [[0, 255, 0], [0, 0, 0]])


def test_dicom_without_pixel_data(make_dicom):
    with pytest.raises(MissingPixelData, match=r"sr\.dcm: DICOM has no PixelData"):
        decode_image(make_dicom(np.zeros((2, 2), dtype=np.uint16), pixel_data=False), "sr.dcm")


def test_dicom_bomb_rejected_before_pixels(make_dicom):
    data = make_dicom(np.zeros((2, 2), dtype=np.uint16), rows=20000, columns=20000)
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge, match=r"huge\.dcm: 20000x20000"):
        decode_image(data, "huge.dcm")
    assert time.perf_counter() - started < 0.5


def test_corrupt_dicom_pixels(make_dicom):
    data = make_dicom(np.zeros((2, 2), dtype=np.uint16), rows=64, columns=64)  # 8 bytes for 64×64 pixels
    with pytest.raises(CorruptImage, match=r"short\.dcm"):
        decode_image(data, "short.dcm")


def test_every_failure_is_an_image_decode_error():
    for cls in (CorruptImage, ImageTooLarge, MissingPixelData, MultiFrameImage, UnsupportedImageFormat):
        assert issubclass(cls, ImageDecodeError)
