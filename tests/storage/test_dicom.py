"""Hostile DICOM headers and pixel data: pydicom's LUT functions, documented fallbacks, named errors."""

import io
import math

import numpy as np
import pytest
from PIL import Image, ImageFile
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels import get_decoder
from pydicom.tag import Tag
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, RLELossless

from storage import CorruptImage, UnsupportedImageFormat, decode_image

RAMP = np.array([[0, 500, 1000]], dtype=np.uint16)
RAMP_MINMAX = [0, 128, 255]  # the per-image min-max stretch of RAMP


def _raw(ds: Dataset, keyword: str, text: str) -> None:
    """Put ``text`` into the header as written, unchecked, as a broken modality would."""
    tag = Tag(tag_for_keyword(keyword))
    value = text.encode() + b" " * (len(text) % 2)  # DICOM values have even length
    ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)


def _header(**values: str):
    def edit(ds: Dataset) -> None:
        for keyword, text in values.items():
            _raw(ds, keyword, text)

    return edit


def _gray(image: Image.Image) -> list:
    return np.asarray(image)[..., 0].tolist()


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"WindowCenter": "NaN", "WindowWidth": "inf"}, "'NaN'"),
        ({"WindowCenter": "500", "WindowWidth": "-inf"}, "'-inf'"),
        ({"WindowCenter": "abc", "WindowWidth": "400"}, "'abc'"),
        ({"WindowCenter": "500", "WindowWidth": "0.5"}, "'0.5'"),  # LINEAR needs a width >= 1
        ({"WindowCenter": "500"}, "WindowWidth is missing"),
        ({"WindowCenter": "500", "WindowWidth": "400", "VOILUTFunction": "CUBIC"}, "'CUBIC'"),
    ],
)
def test_unusable_window_falls_back_to_minmax_and_says_why(make_dicom, values, named):
    image = decode_image(make_dicom(RAMP, edit=_header(**values)), "cxr.dcm")
    assert _gray(image) == [RAMP_MINMAX]
    assert image.info["window"] == "minmax" and named in image.info["window_fallback"]


def test_no_window_is_minmax_without_a_complaint(make_dicom):
    image = decode_image(make_dicom(RAMP), "cxr.dcm")
    assert _gray(image) == [RAMP_MINMAX]
    assert image.info["window"] == "minmax" and image.info["window_fallback"] is None


def test_sigmoid_window_goes_through_pydicom(make_dicom):
    image = decode_image(
        make_dicom(RAMP, window=(500.0, 500.0), edit=_header(VOILUTFunction="SIGMOID")), "a.dcm"
    )
    expected = [round(255 / (1 + math.exp(-4 * (value - 500) / 500))) for value in RAMP[0].tolist()]
    assert _gray(image) == [expected] and image.info["window"] == (500.0, 500.0)


def _lut_item(first: int, bits: int, data: list[int]) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(data), first, bits]
    item["LUTDescriptor"].VR = "US"
    item.LUTData = data
    item["LUTData"].VR = "US"
    return item


def test_voi_lut_sequence_is_applied_in_preference_to_the_window(make_dicom):
    def edit(ds: Dataset) -> None:
        ds.VOILUTSequence = [_lut_item(0, 8, [200, 100, 50, 0])]  # an inverting LUT over 0..3
        ds.WindowCenter, ds.WindowWidth = 1.0, 2.0

    image = decode_image(make_dicom(np.array([[0, 1, 2, 3, 9]], dtype=np.uint16), edit=edit), "a.dcm")
    # stretched over the LUT's own output range (0..200); values past the LUT take its last entry
    assert _gray(image) == [[255, 128, 64, 0, 0]] and image.info["window"] == "voi_lut"


def test_modality_lut_sequence_comes_before_the_window(make_dicom):
    raw = np.array([[0, 1, 2, 3]], dtype=np.uint16)

    def modality(ds: Dataset) -> None:
        ds.ModalityLUTSequence = [_lut_item(0, 16, [0, 1000, 2000, 4000])]

    assert _gray(decode_image(make_dicom(raw, edit=modality), "a.dcm")) == [[0, 64, 128, 255]]
    windowed = decode_image(make_dicom(raw, window=(2000.0, 2001.0), edit=modality), "a.dcm")
    # the window is in the LUT's output units: 0 and 1000 below it, 2000 its middle, 4000 above it
    assert _gray(windowed) == [[0, 0, 128, 255]]


@pytest.mark.parametrize(
    ("photometric", "shape", "expected"),
    [
        ("MONOCHROME2", "INVERSE", [255, 127, 0]),
        ("MONOCHROME2", "IDENTITY", RAMP_MINMAX),
        ("MONOCHROME1", "INVERSE", [255, 127, 0]),  # the same inversion stated twice, applied once
        ("MONOCHROME1", None, [255, 127, 0]),
    ],
)
def test_presentation_lut_shape_and_monochrome1(make_dicom, photometric, shape, expected):
    edit = _header(PresentationLUTShape=shape) if shape else None
    image = decode_image(make_dicom(RAMP, photometric=photometric, edit=edit), "a.dcm")
    assert _gray(image) == [expected] and image.info["inverted"] is (expected != RAMP_MINMAX)


@pytest.mark.parametrize(
    ("keyword", "text", "message"),
    [
        ("NumberOfFrames", "thre", r"NumberOfFrames 'thre' is not a whole number"),
        ("RescaleSlope", "x", r"RescaleSlope 'x' is not a finite number"),
        ("RescaleIntercept", "nan", r"RescaleIntercept 'nan' is not a finite number"),
        ("RescaleSlope", "0", r"RescaleSlope '0' maps every pixel to one value"),
    ],
)
def test_unreadable_header_numbers_are_named_errors(make_dicom, keyword, text, message):
    with pytest.raises(CorruptImage, match=r"bad\.dcm: DICOM " + message):
        decode_image(make_dicom(RAMP, edit=_header(**{keyword: text})), "bad.dcm")


def test_too_few_pixel_bytes_for_the_frames_is_corrupt(make_dicom):
    with pytest.raises(CorruptImage, match=r"short\.dcm: .*less than expected"):
        decode_image(make_dicom(RAMP, edit=_header(NumberOfFrames="4")), "short.dcm", frame=0)


# -- compressed pixel data --------------------------------------------------------------------------------

GRADIENT = (np.add.outer(np.arange(64), np.arange(64)) * 2).astype(np.uint8)  # [rows, cols]


def _codestream(fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(GRADIENT).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _compressed(syntax: str, frame: bytes):
    def edit(ds: Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"

    return edit


def _rle_frame(make_dicom) -> bytes:
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(make_dicom(GRADIENT)))
    ds.compress(RLELossless, encoding_plugin="pydicom")
    return get_frame(ds.PixelData, 0, number_of_frames=1)


def test_intact_compressed_frames_decode(make_dicom):
    for syntax, frame in [
        (JPEGBaseline8Bit, _codestream("JPEG", quality=95)),
        (JPEG2000Lossless, _codestream("JPEG2000", no_jp2=True)),
        (RLELossless, _rle_frame(make_dicom)),
    ]:
        image = decode_image(make_dicom(GRADIENT, edit=_compressed(syntax, frame)), "c.dcm")
        assert np.abs(np.asarray(image)[..., 0].astype(int) - np.rint(GRADIENT / 252 * 255)).max() <= 3


def test_truncated_jpeg_is_corrupt_even_when_the_decoder_accepts_it(make_dicom, monkeypatch):
    # a lenient decoder (libjpeg in pylibjpeg, or Pillow told to) fills a cut frame with grey and says ok
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    frame = _codestream("JPEG", quality=95)
    data = make_dicom(GRADIENT, edit=_compressed(JPEGBaseline8Bit, frame[: len(frame) // 2]))
    with pytest.raises(CorruptImage, match=r"cut\.dcm: .*ends without the end-of-image marker FFD9"):
        decode_image(data, "cut.dcm")


def test_truncated_jpeg2000_is_corrupt_not_a_missing_plugin(make_dicom):
    frame = _codestream("JPEG2000", no_jp2=True)
    data = make_dicom(GRADIENT, edit=_compressed(JPEG2000Lossless, frame[: len(frame) // 2]))
    with pytest.raises(CorruptImage, match=r"cut\.dcm: .*JPEG 2000 .*truncated"):
        decode_image(data, "cut.dcm")


def test_decoder_errors_are_corrupt_data_not_a_missing_plugin(make_dicom):
    frame = _rle_frame(make_dicom)  # RLE has no end marker: only pydicom's own decoder notices the cut
    data = make_dicom(GRADIENT, edit=_compressed(RLELossless, frame[:-40]))
    with pytest.raises(CorruptImage, match=r"rle\.dcm: .*RLE Lossless .*could not be decoded.*corrupt"):
        decode_image(data, "rle.dcm")


@pytest.mark.skipif(get_decoder(JPEGLosslessSV1).is_available, reason="a JPEG Lossless decoder is installed")
def test_missing_decoder_is_unsupported_with_the_plugins_to_install(make_dicom):
    data = make_dicom(GRADIENT, edit=_compressed(JPEGLosslessSV1, _codestream("JPEG")))
    with pytest.raises(UnsupportedImageFormat, match=r"lossless\.dcm: .*no decoder .*install"):
        decode_image(data, "lossless.dcm")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_header(Rows="x"), CorruptImage),  # read as a binary US: 8312 rows, 6 bytes of pixels
        (_header(BitsAllocated="7"), CorruptImage),
        (_header(PhotometricInterpretation="PALETTE COLOR"), UnsupportedImageFormat),
        (_header(RescaleSlope="1e400"), CorruptImage),
    ],
)
def test_hostile_headers_are_named_errors(make_dicom, edit, expected):
    with pytest.raises(expected, match=r"^h\.dcm: "):
        decode_image(make_dicom(RAMP, edit=edit), "h.dcm")


def test_unknown_transfer_syntax_is_unsupported(make_dicom):
    data = make_dicom(RAMP).replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.9.9.9\0")  # same length
    with pytest.raises(UnsupportedImageFormat, match=r"'1\.2\.840\.10008\.9\.9\.9' is not a transfer syntax"):
        decode_image(data, "p.dcm")


def test_multi_valued_window_uses_its_first_pair(make_dicom):
    usable = decode_image(
        make_dicom(RAMP, edit=_header(WindowCenter="500\\abc", WindowWidth="1001\\x")), "a.dcm"
    )
    assert usable.info["window"] == (500.0, 1001.0) and _gray(usable) == [[0, 128, 255]]
    broken = decode_image(make_dicom(RAMP, edit=_header(WindowCenter="1\\2", WindowWidth="abc\\1")), "a.dcm")
    assert broken.info["window_fallback"] == "WindowWidth 'abc' is not a finite number"


@pytest.mark.skipif(
    list(get_decoder(JPEGExtended12Bit).available_plugins) != ["pillow"],
    reason="needs Pillow as the only plugin",
)
def test_a_variant_the_installed_decoder_refuses_is_unsupported_not_corrupt(make_dicom):
    def edit(ds: Dataset) -> None:
        _compressed(JPEGExtended12Bit, _codestream("JPEG"))(ds)
        ds.BitsStored, ds.HighBit = 12, 11  # Pillow decodes 8-bit JPEG Extended only

    with pytest.raises(UnsupportedImageFormat, match=r"x12\.dcm: the installed decoder cannot handle"):
        decode_image(make_dicom(GRADIENT.astype(np.uint16), edit=edit), "x12.dcm")
