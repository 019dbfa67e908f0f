"""The decoy control: the positive control plus a cancelling head pair that misleads chefer alone."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # the shipped models must load without a network

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText

from explainer import Explainer
from phantom import DECOY_MODEL_PATH, MODEL_PATH, sample
from phantom.training.data import GRID, encode, footprint
from phantom.training.decoy import DECOY_CELL
from phantom.training.evaluate import MODEL_INPUTS, generate_answers
from phantom.training.recipes import HELDOUT_SEED, HUB_ROUTING
from vocabulary.map_stats import peak_cell, pointing_hit
from vocabulary.regions import box_region, corners

CASES = sample(12, HELDOUT_SEED + 41)  # locate and presence, the asked nodule absent in some
METHODS = ("chefer", "rollout", "raw_attention", "occlusion")
MINUS_HEAD = 5  # the pair is query heads 4 (o_proj +α·d) and 5 (−α·d) of the last layer


@pytest.fixture(scope="module")
def explainers():
    torch.set_num_threads(1)
    return {
        "positive": Explainer.from_pretrained(MODEL_PATH),
        "decoy": Explainer.from_pretrained(DECOY_MODEL_PATH),
    }


@pytest.fixture(scope="module")
def answer_maps(explainers):
    """Per model, method and case: the greedy answer and the whole-answer map, as `explain` gives them."""
    maps = {}
    for name, explainer in explainers.items():
        for method in METHODS:
            explanations = [
                explainer.explain(case.image, case.question, targets="answer", method=method)
                for case in CASES
            ]
            maps[name, method] = [(e.answer, e.answer_map()) for e in explanations]
    return maps


def test_decoy_folder_is_complete_hugging_face_format():
    for file in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert (DECOY_MODEL_PATH / file).is_file(), f"missing {file}"
    assert (DECOY_MODEL_PATH / "model.safetensors").stat().st_size < 4_000_000
    text = json.loads((DECOY_MODEL_PATH / "config.json").read_text())["text_config"]
    assert (text["num_attention_heads"], text["num_key_value_heads"]) == (8, 4)  # 6 fail to load
    generation = json.loads((DECOY_MODEL_PATH / "generation_config.json").read_text())
    tokenizer = json.loads((DECOY_MODEL_PATH / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    assert generation["eos_token_id"] == [ids["<eos>"], ids["<end_of_turn>"]]
    report = json.loads((DECOY_MODEL_PATH / "training_report.json").read_text())
    assert report["name"] == "decoy"
    assert report["command"].split()[:3] == ["python", "-m", "phantom.training.decoy"]
    assert report["construction"]["decoy_cell"]["index"] == DECOY_CELL
    assert report["heldout"]["answers_identical"] == report["heldout"]["cases"]


def test_decoy_cell_is_clear_of_asked_objects_corners_and_hubs():
    cases = sample(400, 7, finding_prob=1.0)  # a training seed, the asked nodule in every case
    asked = np.stack([footprint(case.lesion_box, case.scene.size) for case in cases])  # [400, 64]
    assert asked.any(axis=0).sum() > 20 and not asked[:, DECOY_CELL].any()
    assert corners((GRID, GRID))["corners"].reshape(-1)[DECOY_CELL] == 0
    assert DECOY_CELL not in HUB_ROUTING.hub  # the pooling control's hub tokens


def test_decoy_loads_with_the_auto_class_and_answers_as_the_positive_control(explainers):
    decoy = AutoModelForImageTextToText.from_pretrained(DECOY_MODEL_PATH).eval()  # default attention
    processor = explainers["decoy"].processor
    answers = generate_answers(decoy, processor, CASES)
    assert {c.task for c in CASES} == {"locate", "presence"}
    assert answers == generate_answers(explainers["positive"].model, processor, CASES)
    assert sum(a == c.answer for a, c in zip(answers, CASES, strict=True)) >= 11


@torch.no_grad()
def test_answer_logits_change_by_float_rounding_only_and_the_pair_is_live(explainers):
    batch = encode(CASES, explainers["positive"].processor).batch(slice(None))
    inputs = {key: batch[key] for key in MODEL_INPUTS}
    rows = batch["labels"].roll(-1, dims=1) != -100  # rows p-1 that predict the answer and <end_of_turn>
    positive = explainers["positive"].model(**inputs).logits[rows]
    decoy_model = explainers["decoy"].model
    assert (positive - decoy_model(**inputs).logits[rows]).abs().max() <= 1e-4
    # without the −α·d half of the pair the +α·d half alone moves the answer logits by far more
    o_proj = decoy_model.model.language_model.layers[-1].self_attn.o_proj.weight  # [hidden, 8 heads * 32]
    column = MINUS_HEAD * decoy_model.config.text_config.head_dim  # the value's component 0
    minus_half = o_proj[:, column].clone()
    try:
        o_proj[:, column] = 0
        assert (positive - decoy_model(**inputs).logits[rows]).abs().max() > 1.0
    finally:
        o_proj[:, column] = minus_half


def test_occlusion_maps_and_answers_are_unchanged(answer_maps):
    for (positive_answer, positive_map), (decoy_answer, decoy_map) in zip(
        answer_maps["positive", "occlusion"], answer_maps["decoy", "occlusion"], strict=True
    ):
        assert decoy_answer == positive_answer
        assert np.abs(decoy_map - positive_map).max() <= 1e-4


def _rates(answer_maps, name, method):
    """(share of peaks on the decoy cell, share of peaks on the asked object among cases with one)."""
    maps = [cell_map for _, cell_map in answer_maps[name, method]]
    on_decoy = np.mean([peak_cell(m) == divmod(DECOY_CELL, GRID) for m in maps])
    hits = [
        pointing_hit(m, box_region(case.lesion_box, case.image.size, m.shape))
        for m, case in zip(maps, CASES, strict=True)
        if case.lesion_box is not None
    ]
    return on_decoy, np.mean(hits)


def test_chefer_alone_moves_to_the_decoy_cell(answer_maps):
    assert sum(case.lesion_box is not None for case in CASES) >= 8
    chefer_positive, chefer_positive_hit = _rates(answer_maps, "positive", "chefer")
    chefer_decoy, chefer_decoy_hit = _rates(answer_maps, "decoy", "chefer")
    assert chefer_positive <= 0.1 and chefer_positive_hit >= 0.85, (chefer_positive, chefer_positive_hit)
    assert chefer_decoy >= 0.9 and chefer_decoy_hit <= 0.1, (chefer_decoy, chefer_decoy_hit)
    for method in ("rollout", "raw_attention"):
        _, before = _rates(answer_maps, "positive", method)
        on_decoy, after = _rates(answer_maps, "decoy", method)
        assert before >= 0.85 and after >= before - 0.1 and on_decoy <= 0.1, (method, before, after, on_decoy)
