"""Removal curves, model randomisation and map agreement, against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explainer import Explainer, Target
from explainer._forward import embed_inputs, forward_embeddings
from explainer._sequence import sequence_layout
from explainer.checks import randomized_top_layers, removal_curves, target_log_probability
from tests.models import random_image
from vocabulary.map_stats import average_ranks, spearman, top_cell_agreement


def test_removal_curves_match_a_direct_computation(tiny_grid4):
    explainer = Explainer(tiny_grid4.model, tiny_grid4.processor)
    inputs = explainer.prepare_inputs(
        tiny_grid4.inputs([random_image(0)], "Where is the nodule?", "right upper zone")
    )
    seq_len = inputs["input_ids"].shape[1]
    target = Target((seq_len - 2, seq_len - 1), "word", "upper zone")
    row = explainer.relevance(inputs, [seq_len - 1], method="occlusion")[0]
    curves = removal_curves(explainer, inputs, target, row, steps=4)

    layout = sequence_layout(inputs["input_ids"], tiny_grid4.config)
    image = layout.image_positions
    ranked = image[torch.argsort(row[image], descending=True, stable=True)]
    with torch.no_grad():
        embeddings = embed_inputs(tiny_grid4.model, inputs)
        variant = embeddings.clone()
        variant[0, ranked[:8]] = embeddings[0, image].mean(dim=0)  # half of the 16 tokens: step 2 of 4
        expected = target_log_probability(
            forward_embeddings(tiny_grid4.model, variant, inputs), inputs["input_ids"][0], target
        )
        untouched = target_log_probability(
            forward_embeddings(tiny_grid4.model, embeddings, inputs), inputs["input_ids"][0], target
        )
    assert curves.most_relevant_first[2] == pytest.approx(expected.item(), abs=1e-4)
    assert curves.most_relevant_first[0] == pytest.approx(untouched.item(), abs=1e-4)
    assert curves.least_relevant_first[0] == pytest.approx(untouched.item(), abs=1e-4)
    assert curves.most_relevant_first[-1] == pytest.approx(curves.least_relevant_first[-1], abs=1e-4)
    assert curves.auc_gap == pytest.approx(curves.lerf_auc - curves.morf_auc)
    assert (
        curves.most_relevant_first[1] < curves.least_relevant_first[1]
    )  # occlusion's top token matters most


def test_randomized_top_layers_changes_the_model_and_restores_it(tiny):
    inputs = tiny.inputs([random_image(0)], "Where is the nodule?", "right upper zone")
    before = {name: p.clone() for name, p in tiny.model.named_parameters()}
    with torch.no_grad():
        original = tiny.model(**inputs).logits
        with randomized_top_layers(tiny.model, 2, seed=1):
            randomized = tiny.model(**inputs).logits
            changed = [n for n, p in tiny.model.named_parameters() if not torch.equal(p, before[n])]
        after = tiny.model(**inputs).logits
    assert not torch.allclose(original, randomized)
    assert changed and all(".layers.4." in n or ".layers.5." in n for n in changed)
    assert torch.equal(original, after)
    assert all(torch.equal(p, before[n]) for n, p in tiny.model.named_parameters())


def test_spearman_and_agreement_on_known_maps():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert spearman(a, a * 10 + 1) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert list(average_ranks(np.array([5.0, 1.0, 5.0, 2.0]))) == [3.5, 1.0, 3.5, 2.0]
    # ties: ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4) → r = 4.5 / sqrt(4.5 · 5)
    assert spearman(np.array([0.0, 1.0, 1.0, 2.0]), np.arange(4.0)) == pytest.approx(4.5 / np.sqrt(4.5 * 5))
    assert spearman(np.ones(4), np.arange(4.0)) == 0.0
    assert top_cell_agreement(a, a) and not top_cell_agreement(a, -a)


def test_check_explanation_compares_every_method_with_occlusion(tiny_grid4, monkeypatch):
    from explainer import generation
    from explainer.checks import check_explanation
    from explainer.methods import IMAGE_REFERENCE, METHODS

    explainer = Explainer(tiny_grid4.model, tiny_grid4.processor)
    ids = torch.tensor(tiny_grid4.tokenizer("right upper zone", add_special_tokens=False)["input_ids"])
    monkeypatch.setattr(generation, "generate_answer", lambda *args, **kwargs: ids)
    explanation = explainer.explain(random_image(0), "Where is the nodule?", targets=["upper"])
    before = {name: p.clone() for name, p in tiny_grid4.model.named_parameters()}
    targets = [t for t in explanation.targets if t.kind in ("answer", "word")]
    checks = check_explanation(explainer, explanation, targets, randomize_layers=2, removal_steps=4)

    single_image = [m for m in METHODS if m != IMAGE_REFERENCE]  # image occlusion needs several images
    assert [(c.method, c.target.kind) for c in checks] == [(m, t.kind) for m in single_image for t in targets]
    by_key = {(c.method, c.target.kind): c for c in checks}
    assert np.allclose(by_key[("chefer", "answer")].image_maps[0], explanation.answer_map(), atol=1e-6)
    occlusion = by_key[("occlusion", "answer")]
    assert occlusion.spearman_vs_occlusion == [pytest.approx(1.0)] and occlusion.top_cell_agrees == [True]
    assert occlusion.randomization_spearman is None
    chefer = by_key[("chefer", "answer")]
    assert -1.0 <= chefer.spearman_vs_occlusion[0] <= 1.0 and len(chefer.randomization_spearman) == 1
    assert chefer.randomization_spearman[0] < 0.999  # the top layers mattered to the map
    assert chefer.auc_gap == pytest.approx(chefer.lerf_auc - chefer.morf_auc)
    assert all(torch.equal(p, before[n]) for n, p in tiny_grid4.model.named_parameters())


def test_a_long_study_is_checked_image_by_image_only(tiny_grid4, monkeypatch):
    from explainer import generation
    from explainer.checks import check_explanation
    from explainer.methods import METHODS

    explainer = Explainer(tiny_grid4.model, tiny_grid4.processor)
    ids = torch.tensor(tiny_grid4.tokenizer("yes", add_special_tokens=False)["input_ids"])
    monkeypatch.setattr(generation, "generate_answer", lambda *args, **kwargs: ids)
    images = [random_image(seed) for seed in range(3)]
    explanation = explainer.explain(images, "Is there a nodule?", targets="answer")
    targets = [t for t in explanation.targets if t.kind == "answer"]
    image_tokens = 3 * 16  # a 4 x 4 grid per image

    every = check_explanation(explainer, explanation, targets, randomize_layers=0, removal_steps=2)
    assert [c.method for c in every] == list(METHODS)  # several images: image occlusion too
    long = check_explanation(
        explainer, explanation, targets, randomize_layers=0, removal_steps=2, max_cell_tokens=image_tokens - 1
    )
    assert [c.method for c in long] == ["chefer", "rollout", "raw_attention", "image_occlusion"]
    chefer = long[0]
    assert np.isnan(chefer.spearman_vs_occlusion).all() and chefer.top_cell_agrees == [None] * 3
    by_method = {c.method: c for c in every}
    np.testing.assert_allclose(long[3].image_maps, by_method["image_occlusion"].image_maps, atol=1e-6)
    np.testing.assert_allclose(chefer.image_maps, by_method["chefer"].image_maps, atol=1e-6)
