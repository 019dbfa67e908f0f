"""Relevance leaves nothing behind on the model: no gradients, hooks, flags or settings."""

from __future__ import annotations

import pytest
import torch

from explainer import Explainer
from explainer._capture import AttentionUnavailable, language_layers
from explainer.methods import METHODS
from phantom.build import TinyGemma3Spec
from tests.model_state import assert_no_gradients, model_state
from tests.models import TinyVLM, random_image


@pytest.mark.parametrize("method", sorted(METHODS))
def test_relevance_leaves_the_model_as_it_found_it(tiny, method):
    inputs = tiny.inputs([random_image(0)], "Where is the nodule?", "right upper zone")
    before = model_state(tiny.model)  # before the Explainer is built: wrapping must change nothing either
    explainer = Explainer(tiny.model, tiny.processor)
    assert model_state(tiny.model) == before
    explainer.relevance(inputs, [inputs["input_ids"].shape[1] - 1], method=method)
    assert model_state(tiny.model) == before
    assert_no_gradients(tiny.model)


def test_relevance_restores_the_model_when_it_raises(tiny, monkeypatch):
    inputs = tiny.inputs([random_image(0)], "Where is the nodule?", "right upper zone")
    tiny.model.train()  # a state that relevance changes (to eval) and must restore
    before = model_state(tiny.model)
    explainer = Explainer(tiny.model, tiny.processor)

    def broken_grad(*args, **kwargs):
        raise RuntimeError("injected failure in the backward pass")

    monkeypatch.setattr(torch.autograd, "grad", broken_grad)
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            explainer.relevance(inputs, [inputs["input_ids"].shape[1] - 1])
        assert model_state(tiny.model) == before
        assert_no_gradients(tiny.model)
    finally:
        tiny.model.eval()


def test_an_sdpa_model_with_trainable_weights_is_explained_and_given_back_as_it_was():
    vlm = TinyVLM(TinyGemma3Spec(initializer_range=0.2), seed=3)
    vlm.model.set_attn_implementation("sdpa")
    for parameter in vlm.model.parameters():
        parameter.requires_grad_(True)
    before = model_state(vlm.model)
    assert before["attention"] == "sdpa" and all(before["requires_grad"])
    explainer = Explainer(vlm.model, vlm.processor)
    inputs = vlm.inputs([random_image(0)], "Where is the nodule?", "right upper zone")
    row = explainer.relevance(inputs, [inputs["input_ids"].shape[1] - 1])[0]
    assert torch.isfinite(row).all() and row.sum() > 1.0
    assert model_state(vlm.model) == before  # relevance switched to eager and froze only while it ran
    assert_no_gradients(vlm.model)


def test_a_model_that_cannot_switch_to_eager_is_refused_with_the_fix(monkeypatch):
    vlm = TinyVLM(TinyGemma3Spec(), seed=4)
    vlm.model.set_attn_implementation("sdpa")

    def refuse(_implementation):
        raise ValueError("this build has flash attention only")

    monkeypatch.setattr(vlm.model, "set_attn_implementation", refuse)
    with pytest.raises(AttentionUnavailable, match=r"attn_implementation=\{'text_config': 'eager'\}"):
        Explainer(vlm.model, vlm.processor)


def test_the_decoder_layers_are_found_at_transformers_5_path_only(tiny):
    assert language_layers(tiny.model) is tiny.model.model.language_model.layers
    with pytest.raises(
        AttentionUnavailable, match=r"Gemma3Model has no .* at \.model\.language_model\.layers"
    ):
        language_layers(tiny.model.model)  # the inner Gemma3Model, whose layers sit at .language_model.layers
