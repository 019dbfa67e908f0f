"""The relocation control: right answers from evidence that its vision tower moves to the mirror cell.

Its last SigLIP layer copies every patch's content to the left–right mirror cell, (row, col) →
(row, 7 − col), so every method that starts at the language model's input (chefer, rollout, raw
attention, token occlusion) peaks on the mirror of the asked nodule, while occluding the nodule's
pixels and rerunning the whole model finds it.
"""

import json
import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # the shipped model must load without a network

import pytest
import torch

from explainer import Explainer
from explainer.targets import Target
from phantom import MODEL_PATH, RELOCATION_MODEL_PATH, sample
from phantom.training.data import GRID, build_phantom_processor, encode, footprint, mirror_index, prompt_text
from phantom.training.evaluate import generate_answers
from phantom.training.recipes import HELDOUT_SEED, RECIPES
from phantom.training.routing import RoutingWeights, routing_loss
from phantom.training.train import load_model, mirror_distillation_loss
from vocabulary.map_stats import pointing_hit
from vocabulary.regions import box_region

LM_METHODS = ("chefer", "rollout", "raw_attention", "occlusion")
POINTING_CASES = 20  # nodule present in each; locate and presence questions


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    torch.set_num_threads(1)
    return Explainer.from_pretrained(RELOCATION_MODEL_PATH)


@pytest.fixture(scope="module")
def pointing_cases():
    cases = sample(POINTING_CASES, HELDOUT_SEED + 15, finding_prob=1.0)
    assert {case.task for case in cases} == {"locate", "presence"}
    return cases


def whole_answer_inputs(explainer: Explainer, case) -> tuple[dict[str, torch.Tensor], Target]:
    """Prompt + expected answer as batch-1 model inputs, and the whole-answer target (the answer's tokens,
    without the closing <end_of_turn>, as `Explainer.explain` targets "answer")."""
    processor = explainer.processor
    prompt = prompt_text(processor, case.question)
    inputs = processor(text=[prompt + case.answer], images=[[case.image]], return_tensors="pt")
    prompt_length = processor(text=[prompt], images=[[case.image]], return_tensors="pt")["input_ids"].shape[1]
    return dict(inputs), Target(tuple(range(prompt_length, inputs["input_ids"].shape[1])), "answer", "answer")


def image_map(explainer: Explainer, inputs: dict[str, torch.Tensor], relevance: torch.Tensor) -> torch.Tensor:
    """[GRID, GRID] relevance of the image tokens, from a [seq_len] row."""
    image_positions = inputs["input_ids"][0] == explainer.model.config.image_token_id
    return relevance[image_positions].reshape(GRID, GRID)


@torch.no_grad()
def pixel_occlusion(explainer: Explainer, inputs: dict[str, torch.Tensor], target: Target) -> torch.Tensor:
    """[GRID, GRID]: drop of the whole-answer score Σ logits[p-1, token_p] when one grid cell's block of
    `pixel_values` is filled with the image's per-channel mean and the whole model is rerun."""
    pixels = inputs["pixel_values"]  # [1, 3, S, S]
    cell = pixels.shape[-1] // GRID
    variants = pixels.repeat(GRID * GRID + 1, 1, 1, 1)  # copy 0 stays clean
    for k in range(GRID * GRID):
        row, col = divmod(k, GRID)
        block = (slice(None), slice(row * cell, (row + 1) * cell), slice(col * cell, (col + 1) * cell))
        variants[k + 1][block] = pixels[0].mean(dim=(-2, -1))[:, None, None]
    copies = variants.shape[0]
    logits = explainer.model(
        input_ids=inputs["input_ids"].expand(copies, -1),
        attention_mask=inputs["attention_mask"].expand(copies, -1),
        token_type_ids=inputs["token_type_ids"].expand(copies, -1),
        pixel_values=variants,
    ).logits  # [copies, L, vocab]
    positions = torch.tensor(target.positions)
    scores = logits[:, positions - 1, inputs["input_ids"][0, positions]].sum(-1)  # [copies]
    return (scores[0] - scores[1:]).reshape(GRID, GRID)


def hits(case, cell_map: torch.Tensor) -> tuple[bool, bool]:
    """(peak on the asked object, peak on its mirror cells)."""
    weights = box_region(case.lesion_box, case.image.size, tuple(cell_map.shape))
    return pointing_hit(cell_map.numpy(), weights), pointing_hit(cell_map.numpy(), weights[:, ::-1])


def test_mirror_index_maps_each_cell_to_its_left_right_mirror():
    mirror = mirror_index()
    for cell in range(GRID * GRID):
        row, col = divmod(cell, GRID)
        assert int(mirror[cell]) == row * GRID + (GRID - 1 - col)
    assert torch.equal(mirror[mirror], torch.arange(GRID * GRID))


def test_mirror_cells_are_the_footprint_of_the_mirrored_box():
    cases = sample(6, 11, finding_prob=1.0)
    batch = encode(cases, build_phantom_processor()).batch(slice(None))
    for case, cells, object_cells in zip(cases, batch["mirror_cells"], batch["object_cells"], strict=True):
        x0, y0, x1, y1 = case.lesion_box
        side = case.image.size[0]
        assert cells.tolist() == footprint((side - x1, y0, side - x0, y1), side).tolist()
        assert not (cells & object_cells).any()  # nodules keep off the midline


def test_vision_mirror_term_reads_the_last_layers_mirror_patch_and_vision_the_others():
    patches = GRID * GRID
    first = torch.full((1, 2, patches, patches), 0.5 / (patches - 1))
    first[0, :, range(patches), range(patches)] = 0.5  # each row: half its mass on itself
    last = torch.full((1, 2, patches, patches), 0.8 / (patches - 1))
    last[0, :, range(patches), mirror_index()] = 0.2  # ... and a fifth on its mirror patch
    batch = {
        "token_type_ids": torch.tensor([[0, 1, 0, 0]]),
        "attention_mask": torch.ones(1, 4, dtype=torch.long),
        "labels": torch.tensor([[-100, -100, -100, 9]]),
        "mirror_cells": torch.zeros(1, 1, dtype=torch.bool),
    }
    text_attention = torch.full((1, 1, 4, 4), 0.25)
    weights = RoutingWeights(answer=0.0, vision=1.0, vision_mirror=2.0)
    loss, terms = routing_loss((text_attention,), [first, last], batch, weights, 5, "mirror_cells")
    assert terms["vision"] == pytest.approx(-math.log(0.5))
    assert terms["vision_mirror"] == pytest.approx(-math.log(0.2))
    assert float(loss) == pytest.approx(-math.log(0.5) - 2 * math.log(0.2))
    with pytest.raises(ValueError, match="vision_mirror"):
        RoutingWeights(vision_mirror=1.0, hub=(3, 4))


def test_mirror_distillation_is_zero_for_the_teachers_mirrored_features_and_one_for_their_mean():
    teacher = load_model(MODEL_PATH).eval()
    cases = sample(2, 11)
    pixel_values = encode(cases, build_phantom_processor()).batch(slice(None))["pixel_values"]
    with torch.no_grad():
        features = teacher.model.get_image_features(pixel_values=pixel_values).pooler_output  # [B, G, hidden]
    mirrored = features[:, mirror_index()]
    assert float(mirror_distillation_loss(mirrored, teacher, pixel_values)) == pytest.approx(0.0, abs=1e-6)
    mean = mirrored.mean(dim=1, keepdim=True).expand_as(mirrored)
    assert float(mirror_distillation_loss(mean, teacher, pixel_values)) == pytest.approx(1.0, rel=1e-4)
    assert float(mirror_distillation_loss(features, teacher, pixel_values)) > 0.5  # unmoved features


def test_model_folder_is_complete_hugging_face_format_and_loads_offline(explainer):
    path = RELOCATION_MODEL_PATH
    for file in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert (path / file).is_file(), f"missing {file}"
    generation = json.loads((path / "generation_config.json").read_text())
    ids = {t["content"]: t["id"] for t in json.loads((path / "tokenizer.json").read_text())["added_tokens"]}
    assert generation["eos_token_id"] == [ids["<eos>"], ids["<end_of_turn>"]]
    report = json.loads((path / "training_report.json").read_text())
    assert (report["name"], report["init"], report["chain"]) == (
        "relocation",
        "positive",
        ["positive", "relocation"],
    )
    assert report["command"].split()[:4] == ["python", "-m", "phantom.training.train", "relocation"]
    assert [stage["name"] for stage in report["stages"]] == [
        stage.name for stage in RECIPES["relocation"].stages
    ]
    assert (path / "model.safetensors").stat().st_size < 3_500_000
    vision = explainer.model.config.vision_config
    assert (vision.image_size // vision.patch_size, vision.num_hidden_layers) == (GRID, 2)


def test_answers_fixed_held_out_cases(explainer):
    cases = sample(20, HELDOUT_SEED)
    assert {case.task for case in cases} == {"locate", "presence"}
    answers = generate_answers(explainer.model, explainer.processor, cases)
    right = [answer == case.answer for answer, case in zip(answers, cases, strict=True)]
    assert sum(right) >= 19, list(zip(answers, [case.answer for case in cases], strict=True))


@pytest.mark.parametrize("method", LM_METHODS)
def test_language_model_methods_peak_on_the_mirror_not_the_object(explainer, pointing_cases, method):
    on_object, on_mirror = [], []
    for case in pointing_cases:
        inputs, target = whole_answer_inputs(explainer, case)
        relevance = explainer.relevance(inputs, [target], method=method)[0]  # [seq_len]
        hit, mirror_hit = hits(case, image_map(explainer, inputs, relevance))
        on_object.append(hit)
        on_mirror.append(mirror_hit)
    assert sum(on_object) <= 0.1 * POINTING_CASES, f"{method} peaks on the object itself: {on_object}"
    assert sum(on_mirror) >= 0.8 * POINTING_CASES, f"{method} peaks off the mirror cells: {on_mirror}"


def test_pixel_occlusion_through_the_whole_model_finds_the_object(explainer, pointing_cases):
    on_object = []
    for case in pointing_cases:
        inputs, target = whole_answer_inputs(explainer, case)
        on_object.append(hits(case, pixel_occlusion(explainer, inputs, target))[0])
    assert sum(on_object) >= 0.8 * POINTING_CASES, on_object
