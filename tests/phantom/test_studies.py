"""Study phantoms (volumes, prior/current pairs) and the study control trained on them."""

import dataclasses
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # the shipped model must load without a network

import numpy as np
import pytest
import torch

from explainer import Explainer
from phantom import STUDY_MODEL_PATH, sample_studies
from phantom.cases import render
from phantom.studies import GROWN, N_SLICES, STABLE, render_slice, volume_third
from phantom.training.recipes import HELDOUT_SEED
from phantom.training.study import build_study_processor, encode_studies
from vocabulary.map_stats import pointing_hit
from vocabulary.regions import box_region


def _changed_box(a, b):
    ys, xs = np.nonzero(np.any(np.asarray(a) != np.asarray(b), axis=-1))
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("kind", ["volume", "longitudinal"])
def test_same_seed_same_studies_and_prefixes_agree(kind):
    first, again, longer = sample_studies(4, 7, kind), sample_studies(4, 7, kind), sample_studies(6, 7, kind)
    for a, b, c in zip(first, again, longer, strict=False):
        assert (
            [i.tobytes() for i in a.images]
            == [i.tobytes() for i in b.images]
            == [i.tobytes() for i in c.images]
        )
        assert (a.question, a.answer, a.evidence_boxes, a.image_labels) == (
            c.question,
            c.answer,
            c.evidence_boxes,
            c.image_labels,
        )
    other = sample_studies(4, 8, kind)
    assert [a.images[-1].tobytes() for a in first] != [b.images[-1].tobytes() for b in other]


def test_volume_boxes_bound_exactly_the_nodule_pixels_and_other_slices_have_none():
    cases = sample_studies(30, 3, "volume")
    assert {c.task for c in cases} == {"presence", "locate"}
    assert {len(c.nodule_images) for c in cases} == {0, 1, 2}
    for case in cases:
        assert case.image_labels == [f"slice {k} of {N_SLICES}" for k in range(1, N_SLICES + 1)]
        for k, (image, box, scene) in enumerate(
            zip(case.images, case.evidence_boxes, case.scenes, strict=True)
        ):
            changed = _changed_box(image, render_slice(dataclasses.replace(scene, nodule=None)))
            assert changed == box, f"case {case.index} slice {k}: box {box}, nodule drew {changed}"
            assert (box is not None) == (k in case.nodule_images)
        shown = case.nodule_images
        assert len(shown) <= 2 and shown == tuple(range(shown[0], shown[0] + len(shown))) if shown else True
        if case.task == "locate":
            assert len({volume_third(k) for k in shown}) == 1  # the nodule stays inside one third
            assert case.answer == f"{volume_third(shown[0])} third"
        else:
            assert case.answer == ("yes" if shown else "no")


def test_longitudinal_boxes_bound_the_nodule_in_each_image_and_answers_follow_growth():
    cases = sample_studies(30, 4, "longitudinal")
    assert {c.answer for c in cases} == {"yes", "no"}
    for case in cases:
        assert case.image_labels == ["prior", "current"]
        assert case.question == "Has the nodule grown since the prior?"
        for image, box, scene in zip(case.images, case.evidence_boxes, case.scenes, strict=True):
            changed = _changed_box(image, render(dataclasses.replace(scene, objects=())))
            assert changed is not None and box is not None
            x0, y0, x1, y1 = changed
            assert box[0] <= x0 and box[1] <= y0 and x1 <= box[2] and y1 <= box[3]
        ratio = case.radii[1] / case.radii[0]
        low, high = GROWN if case.answer == "yes" else STABLE
        assert low <= ratio <= high


def test_invalid_kind_says_what_is_allowed():
    with pytest.raises(ValueError, match="Valid values are"):
        sample_studies(1, 0, "mri")


def test_encoding_prompts_as_the_explainer_does():
    """Training rows are the explainer's prompt (labels before images) + answer, token for token."""
    from explainer.generation import build_prompt

    processor = build_study_processor()
    for kind in ("volume", "longitudinal"):
        cases = sample_studies(2, 5, kind)
        encoded = encode_studies(cases, processor)
        for i, case in enumerate(cases):
            prompt = build_prompt(processor, case.images, case.question, image_labels=case.image_labels)
            length = prompt.length
            assert torch.equal(encoded.input_ids[i, :length], prompt.inputs["input_ids"][0])
            batch = encoded.batch(slice(i, i + 1))
            assert torch.allclose(batch["pixel_values"], prompt.inputs["pixel_values"], atol=1e-6)
            answer = encoded.labels[i][encoded.labels[i] != -100]
            assert processor.tokenizer.decode(answer, skip_special_tokens=True).strip() == case.answer
            # the label words before image k are marked k + 1
            words = encoded.input_ids[i][encoded.label_index[i] == 1]
            assert processor.tokenizer.decode(words).replace(" ", "") == case.image_labels[0].replace(" ", "")


def test_study_model_folder_is_complete_and_small():
    for file in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert (STUDY_MODEL_PATH / file).is_file(), f"missing {file}"
    assert (STUDY_MODEL_PATH / "model.safetensors").stat().st_size < 8_000_000
    report = json.loads((STUDY_MODEL_PATH / "training_report.json").read_text())
    assert report["name"] == "study" and report["command"].startswith("python -m phantom.training.study")
    assert report["heldout"]["seed"] == HELDOUT_SEED


@pytest.fixture(scope="module")
def explainer():
    torch.set_num_threads(1)
    return Explainer.from_pretrained(STUDY_MODEL_PATH)


def _masses(explanation):
    return np.array(
        [np.clip(explanation.answer_map(k), 0, None).sum() for k in range(len(explanation.images))]
    )


def test_volumes_answered_from_the_nodule_slice(explainer):
    """Held-out volumes with a nodule: right answers, and the slice with the most chefer mass holds it."""
    cases = sample_studies(8, HELDOUT_SEED + 101, "volume", finding_prob=1.0)
    right, hits = [], []
    for case in cases:
        explanation = explainer.explain(
            case.images, case.question, image_labels=case.image_labels, targets="answer"
        )
        right.append(explanation.answer == case.answer)
        hits.append(int(np.argmax(_masses(explanation))) in case.nodule_images)
    assert sum(right) >= 7 and sum(hits) >= 7, (right, hits)


def test_no_nodule_volumes_answer_no(explainer):
    cases = sample_studies(4, HELDOUT_SEED + 102, "volume", tasks=("presence",), finding_prob=0.0)
    answers = [
        explainer.explain(c.images, c.question, image_labels=c.image_labels, targets="answer").answer
        for c in cases
    ]
    assert answers.count("no") >= 3, answers


def test_pairs_answered_from_both_nodules(explainer):
    """Held-out pairs: right answers, and each image's own chefer peak on its nodule when it grew."""
    cases = sample_studies(8, HELDOUT_SEED + 103, "longitudinal")
    right, both = [], []
    for case in cases:
        explanation = explainer.explain(
            case.images, case.question, image_labels=case.image_labels, targets="answer"
        )
        right.append(explanation.answer == case.answer)
        if case.answer == "yes":
            both.append(
                all(
                    pointing_hit(explanation.answer_map(k), box_region(box, image.size, explanation.grid))
                    for k, (image, box) in enumerate(zip(case.images, case.evidence_boxes, strict=True))
                )
            )
    assert len(both) >= 3 and sum(right) >= 7 and sum(both) >= len(both) - 1, (right, both)
