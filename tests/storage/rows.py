"""Complete, valid rows of the answers and tokens tables, with overrides."""

import numpy as np

from storage import REGION_NAMES


def answer_row(item_id="a1", **overrides):
    row = {
        "item_id": item_id,
        "row_number": 1,
        "image_uri": "s3://scans/a.png",
        "question": "Where?",
        "answer": "Right upper lobe.",
        "status": "ok",
        "n_targets": 3,
        "prompt_tokens": ["<bos>", "Where", "?"],
        "prompt_token_special": [True, False, False],
        "image_width": 640,
        "image_height": 480,
        "roi_box": (10.0, 20.0, 30.0, 40.0),
        "model_id": "phantom",
        "model_revision": "abc123",
        "method": "chefer",
        "generate_seconds": 0.25,
        "explain_seconds": 0.5,
        "metadata": {"site": "north", "sex": "F"},
    }
    return {**row, **overrides}


def token_row(item_id="a1", **overrides):
    row = {
        "item_id": item_id,
        "image_index": 0,
        "target_kind": "token",
        "target_text": "Right",
        "word": "Right",
        "token_id": 1234,
        "token_position": 17,
        "method": "chefer",
        "grid_h": 2,
        "grid_w": 2,
        "image_relevance": np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float64),
        "text_relevance": [0.0, 0.5, 0.25],
        "image_mass": 1.0,
        "text_mass": 0.75,
        "image_share": 1.0 / 1.75,
        "region_shares": dict.fromkeys(REGION_NAMES, 0.25),
        "entropy": 0.9,
        "top10_mass": 0.4,
        "peak_row": 1,
        "peak_col": 1,
        "roi_share": 0.4,
        "roi_hit": True,
        "explain_seconds": 0.01,
    }
    return {**row, **overrides}
