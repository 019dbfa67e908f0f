"""Rows from an Explanation: schema conformance, masses and shares, ROI from box and mask, overlay choice."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from PIL import Image

from explainer.explanation import AnswerToken, Explanation
from explainer.targets import Target
from storage import REGION_NAMES, ManifestItem, to_arrow
from tasks.records import RoiError, answer_record, mask_weights, overlay_targets, roi_weights, token_records
from vocabulary.regions import cell_overlap


def _item(**overrides) -> ManifestItem:
    fields = {
        "item_id": "a1",
        "image_uris": ("/data/a1.png",),
        "question": "Where is the nodule?",
        "roi_box": None,
        "roi_mask_uri": None,
        "metadata": {"site": "north"},
        "row_number": 3,
    }
    return ManifestItem(**{**fields, **overrides})


def _explanation() -> Explanation:
    """Answer "right lung" (tokens 10, 11), targets: two tokens, word "right", the answer; 4×4 grid."""
    tokens = [AnswerToken(7, "right", 10, "right"), AnswerToken(8, " lung", 11, "lung")]
    targets = [
        Target((10,), "token", "right"),
        Target((11,), "token", " lung"),
        Target((10,), "word", "right"),
        Target((10, 11), "answer", "answer"),
    ]
    maps = np.zeros((4, 4, 4), dtype=np.float32)
    maps[:, 0, 0] = 3.0  # peak top-left
    maps[:, 3, 3] = 1.0
    maps[:, 1, 1] = -5.0  # negative relevance counts for no mass
    text = np.tile(np.array([1.0, -1.0, 0.0], dtype=np.float32), (4, 1))
    return Explanation(
        question="Where is the nodule?",
        answer="right lung",
        tokens=tokens,
        targets=targets,
        image_maps=[maps],
        text_relevance=text,
        prompt_tokens=["<bos>", "Where", "?"],
        prompt_token_roles=["special", "question", "question"],
        images=[Image.new("RGB", (40, 40))],
        method="chefer",
        model_id="tiny",
        model_revision=None,
        timings={"generate_seconds": 0.5, "explain_seconds": 0.4},
    )


def test_token_rows_fit_the_schema_and_carry_masses_and_shares():
    explanation = _explanation()
    roi = roi_weights(_item(roi_box=(0, 0, 10, 10)), (40, 40), (4, 4))  # exactly cell (0, 0)
    rows = token_records("a1", explanation, roi=roi)
    table = to_arrow("tokens", rows)  # raises SchemaError on any column mismatch
    assert table.num_rows == 4
    answer = rows[3]
    assert answer.target_kind == "answer" and answer.target_text == "right lung" and answer.word is None
    assert rows[0].token_id == 7 and rows[0].token_position == 10 and rows[0].word == "right"
    assert rows[2].target_kind == "word" and rows[2].token_id is None
    assert answer.image_mass == pytest.approx(4.0) and answer.text_mass == pytest.approx(1.0)
    assert answer.image_share == pytest.approx(0.8)
    assert list(answer.region_shares) == list(REGION_NAMES)
    assert answer.region_shares["q_top_left"] == pytest.approx(0.75)
    assert answer.region_shares["q_bottom_right"] == pytest.approx(0.25)
    assert (answer.peak_row, answer.peak_col) == (0, 0) and answer.roi_hit is True
    assert answer.roi_share == pytest.approx(0.75)
    assert len(answer.image_relevance) == 16 and answer.image_relevance[5] == -5.0  # raw, not clipped
    assert answer.explain_seconds == pytest.approx(0.1)


def test_without_roi_the_roi_columns_are_null():
    rows = token_records("a1", _explanation())
    assert all(row.roi_share is None and row.roi_hit is None for row in rows)


def test_answer_rows_for_ok_and_failed_items_fit_the_schema():
    item = _item(roi_box=(1.0, 2.0, 3.0, 4.0))
    identity = {"model_id": "tiny", "model_revision": "sha256:x", "method": "chefer"}
    ok = answer_record(item, image_size=(40, 30), explanation=_explanation(), **identity)
    failed = answer_record(item, **identity)
    table = to_arrow("answers", [ok, failed])
    assert table.column("status").to_pylist() == ["ok", "error"]
    assert ok.prompt_token_special == [True, False, False] and ok.n_targets == 4
    assert table.column("answer").to_pylist()[1] is None and table.column("n_targets").to_pylist()[1] is None
    assert table.column("metadata").to_pylist()[0] == [("site", "north")]


def test_mask_weights_are_fractional_cell_coverage():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[:, :5] = 255  # left half: 2.5 pixel-wide cells on a 4-column grid
    weights = mask_weights(Image.fromarray(mask), (10, 10), (4, 4))
    np.testing.assert_allclose(weights[0], [1.0, 1.0, 0.0, 0.0], atol=1e-6)
    mask[:, :4] = 255
    mask[:, 4] = 0  # 4 pixels: cell 1 is 1.5 of 2.5 pixels covered
    np.testing.assert_allclose(
        mask_weights(Image.fromarray(mask), (10, 10), (4, 4))[0], [1.0, 0.6, 0, 0], atol=1e-6
    )


def _unit_overlap(n_units: int, n_cells: int) -> np.ndarray:
    """[n_cells, n_units]: the fraction of each cell that each unit covers, as a dense matrix."""
    units = np.arange(n_units + 1) / n_units
    return cell_overlap(units[:-1], units[1:], n_cells).T


def _dense_mask_weights(binary: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The slow, obvious way: [rows, width] and [cols, width] overlap matrices around the mask."""
    return _unit_overlap(binary.shape[0], grid[0]) @ binary @ _unit_overlap(binary.shape[1], grid[1]).T


@pytest.mark.parametrize(
    ("height", "width", "grid"),
    [
        (10, 10, (4, 4)),
        (7, 5, (16, 16)),
        (13, 29, (16, 16)),
        (1, 40, (16, 16)),
        (40, 1, (3, 5)),
        (97, 61, (16, 16)),
        (33, 250, (7, 9)),
        (16, 16, (16, 16)),
        (3, 2, (1, 1)),
    ],
)
def test_mask_weights_equal_the_dense_overlap(height, width, grid):
    rng = np.random.default_rng(height * 1000 + width)
    for density in (0.05, 0.5, 0.95):
        binary = rng.random((height, width)) < density
        mask = Image.fromarray(binary.astype(np.uint8) * 255)
        weights = mask_weights(mask, (width, height), grid)
        assert weights.shape == grid and weights.dtype == np.float32
        np.testing.assert_allclose(weights, _dense_mask_weights(binary.astype(np.float64), grid), atol=1e-6)


@pytest.mark.parametrize("size", [(2_000_000, 1), (1, 2_000_000)])
def test_mask_weights_memory_is_linear_in_pixels(size):
    # the [16, width] overlap matrices this replaced peaked at 763 MiB here; it now needs ~4 bytes a pixel
    mask = Image.new("L", size)
    mask.paste(255, (0, 0, size[0] // 3 or 1, size[1] // 3 or 1))
    tracemalloc.start()
    try:
        weights = mask_weights(mask, size, (16, 16))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.0f} MiB for {size[0] * size[1]:,} pixels"
    length = max(size)  # the first third of the long axis is covered, the one-pixel axis fully
    expected = np.clip(length // 3 / (length / 16) - np.arange(16), 0, 1)
    along = weights if size[1] == 1 else weights.T  # [16 along the short axis, 16 along the long one]
    np.testing.assert_allclose(along, np.tile(expected, (16, 1)), atol=1e-6)


def test_roi_that_does_not_fit_the_image_is_an_error():
    with pytest.raises(RoiError, match=r"does not fit the 40x40 image") as info:
        roi_weights(_item(roi_box=(0, 0, 50, 10)), (40, 40), (4, 4))
    assert info.value.error_type == "InvalidRoiBox"
    with pytest.raises(RoiError, match="masks must have the image's size"):
        mask_weights(Image.new("L", (8, 8)), (40, 40), (4, 4))


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("none", []),
        ("answer", ["answer"]),
        ("findings", ["word-right", "answer"]),
        ("all", ["token-000-right", "token-001-lung", "word-right", "answer"]),
    ],
)
def test_overlay_targets_follow_the_policy(policy, expected):
    chosen = overlay_targets(_explanation(), policy, ("right", "nodule"))
    assert [name for _index, name in chosen] == expected
