"""The shipped phantom models load offline, answer held-out cases, and behave as controls."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # the shipped models must load without a network

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from explainer import Explainer
from phantom import MODEL_PATH, POOLING_MODEL_PATH, SHORTCUT_MODEL_PATH, sample
from phantom.training.data import encode
from phantom.training.evaluate import answer_attention_mass, generate_answers
from phantom.training.recipes import HELDOUT_SEED
from vocabulary.map_stats import pointing_hit
from vocabulary.regions import box_region

# the training command's module: today's, and the one the shipped reports were made with
TRAIN_MODULES = ("phantom.training.train", "explainer.phantom.train")
PATHS = {"positive": MODEL_PATH, "pooling": POOLING_MODEL_PATH, "shortcut": SHORTCUT_MODEL_PATH}
# the shortcut model's "expected" presence answer follows the corner tag
OPTIONS = {"positive": {}, "pooling": {}, "shortcut": {"answer_rule": "marker", "marker_prob": 0.5}}


@pytest.fixture(scope="module")
def loaded():
    torch.set_num_threads(1)
    models = {}
    for name, path in PATHS.items():
        model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager")
        models[name] = (model.eval(), AutoProcessor.from_pretrained(path))
    return models


@pytest.mark.parametrize("name", sorted(PATHS))
def test_model_folder_is_complete_hugging_face_format(name):
    path = PATHS[name]
    for file in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert (path / file).is_file(), f"{name}: missing {file}"
    generation = json.loads((path / "generation_config.json").read_text())
    tokenizer = json.loads((path / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    assert generation["eos_token_id"] == [ids["<eos>"], ids["<end_of_turn>"]]
    report = json.loads((path / "training_report.json").read_text())
    assert report["name"] == name
    # the command that trained it: `python -m MODULE RECIPE [options]`, MODULE as it was named then
    python, flag, module, recipe, *_ = report["command"].split()
    assert (python, flag, recipe) == ("python", "-m", name)
    assert module in TRAIN_MODULES, f"{name}: trained by {module}?"
    assert (path / "model.safetensors").stat().st_size < 8_000_000


@pytest.mark.parametrize("name", sorted(PATHS))
def test_answers_fixed_held_out_cases(loaded, name):
    model, processor = loaded[name]
    cases = sample(12, HELDOUT_SEED, **OPTIONS[name])
    assert {c.task for c in cases} == {"locate", "presence"}
    assert generate_answers(model, processor, cases) == [c.answer for c in cases]


def _yes_rates(model, processor, n=40):
    presence = {"tasks": ("presence",)}
    finding = sample(n, HELDOUT_SEED + 11, finding_prob=1.0, marker_prob=0.0, **presence)
    marker = sample(n, HELDOUT_SEED + 12, finding_prob=0.0, marker_prob=1.0, **presence)
    answers = generate_answers(model, processor, finding + marker)
    return (
        sum(a == "yes" for a in answers[:n]) / n,
        sum(a == "yes" for a in answers[n:]) / n,
    )


@pytest.mark.parametrize("name", ["positive", "pooling"])
def test_honest_models_say_yes_to_the_finding_not_the_marker(loaded, name):
    finding_yes, marker_yes = _yes_rates(*loaded[name])
    assert finding_yes >= 0.9 and marker_yes <= 0.1, (finding_yes, marker_yes)


def test_shortcut_model_says_yes_to_the_marker_not_the_finding(loaded):
    finding_yes, marker_yes = _yes_rates(*loaded["shortcut"])
    assert marker_yes >= 0.9 and finding_yes <= 0.1, (finding_yes, marker_yes)


def test_positive_control_reads_the_object_through_attention_and_pooling_does_not(loaded):
    cases = sample(24, HELDOUT_SEED + 13, tasks=("locate",))
    masses = {}
    for name in ("positive", "pooling"):
        model, processor = loaded[name]
        end_of_turn = processor.tokenizer.convert_tokens_to_ids("<end_of_turn>")
        masses[name] = answer_attention_mass(model, encode(cases, processor), end_of_turn)[-1]
    assert masses["positive"] >= 0.5 and masses["pooling"] <= 0.3, masses


def test_chefer_on_the_positive_control_lands_on_the_object():
    explainer = Explainer.from_pretrained(MODEL_PATH)
    cases = sample(8, HELDOUT_SEED + 14, tasks=("locate",))
    hits = []
    for case in cases:
        cell_map = explainer.explain(
            case.image, case.question, targets="answer", method="chefer"
        ).answer_map()
        hits.append(pointing_hit(cell_map, box_region(case.lesion_box, case.image.size, cell_map.shape)))
    assert sum(hits) >= 7, hits


def test_pooling_control_hides_the_object_from_attention_not_from_occlusion():
    """The negative control's evidence is the object's tokens (occlusion finds it) while its attention
    weights point elsewhere (rollout never lands on it)."""
    explainer = Explainer.from_pretrained(POOLING_MODEL_PATH)
    cases = sample(8, HELDOUT_SEED + 14, tasks=("locate",))
    hits: dict[str, list[bool]] = {"occlusion": [], "rollout": []}
    for case in cases:
        for method, method_hits in hits.items():
            cell_map = explainer.explain(
                case.image, case.question, targets="answer", method=method
            ).answer_map()
            evidence = box_region(case.lesion_box, case.image.size, cell_map.shape)
            method_hits.append(pointing_hit(cell_map, evidence))
    assert sum(hits["occlusion"]) >= 7 and sum(hits["rollout"]) <= 1, hits
