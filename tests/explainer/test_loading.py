"""Loading checkpoints from a local folder (offline), and the memory bound on batched gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explainer import Explainer, Target
from explainer.loading import ModelNotSupported
from tests.models import random_image


@pytest.fixture(scope="module")
def saved_tiny(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-checkpoint")
    tiny.model.save_pretrained(folder)
    tiny.processor.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("device_map", [None, "cpu"], ids=["plain", "accelerate-device-map"])
def test_from_pretrained_loads_a_local_folder_ready_for_relevance(saved_tiny, tiny, device_map):
    explainer = Explainer.from_pretrained(str(saved_tiny), device_map=device_map, dtype="float32")
    model = explainer.model
    assert model.config.get_text_config()._attn_implementation == "eager"
    assert model.config.vision_config._attn_implementation == "sdpa"  # faster, returns no maps we need
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert explainer.info.model_id == str(saved_tiny)
    inputs = tiny.inputs([random_image(0)], "Where is the nodule?", "right upper zone")
    positions = [inputs["input_ids"].shape[1] - 1]
    reference = Explainer(tiny.model, tiny.processor).relevance(inputs, positions)
    assert torch.allclose(explainer.relevance(inputs, positions), reference, atol=1e-6)


def test_a_text_only_model_is_refused_with_a_clear_message():
    text_only = torch.nn.Linear(2, 2)
    text_only.config = type("Config", (), {})()
    with pytest.raises(ModelNotSupported, match="Gemma3ForConditionalGeneration"):
        Explainer(text_only)


def test_chunked_gradients_equal_one_batch(tiny):
    inputs = tiny.inputs([random_image(0)], "Where is the nodule?", "The nodule is in the right upper zone.")
    positions = list(range(inputs["input_ids"].shape[1] - 6, inputs["input_ids"].shape[1]))
    one_batch = Explainer(tiny.model, tiny.processor).relevance(inputs, positions)
    one_at_a_time = Explainer(tiny.model, tiny.processor, max_chunk_bytes=1).relevance(inputs, positions)
    assert torch.allclose(one_batch, one_at_a_time, atol=1e-6)


def test_perturbations_batched_within_the_memory_budget_equal_one_copy_per_forward(tiny_grid4):
    from explainer.checks import removal_curves

    inputs = tiny_grid4.inputs([random_image(0), random_image(1)], "Where is the nodule?", "right upper zone")
    seq_len = inputs["input_ids"].shape[1]
    batched, one_copy = Explainer(tiny_grid4.model), Explainer(tiny_grid4.model, max_chunk_bytes=1)
    with batched.context(inputs) as context:
        assert context.copies_per_forward() > 1  # the default budget holds many copies of this sequence
    with one_copy.context(inputs) as context:
        assert context.copies_per_forward() == 1
    occlusion = batched.relevance(inputs, [seq_len - 1, seq_len - 2], method="occlusion")
    assert torch.allclose(
        occlusion, one_copy.relevance(inputs, [seq_len - 1, seq_len - 2], "occlusion"), atol=1e-5
    )
    target = Target((seq_len - 2, seq_len - 1))
    curves = removal_curves(batched, inputs, target, occlusion[0], steps=4)
    reference = removal_curves(one_copy, inputs, target, occlusion[0], steps=4)
    assert np.allclose(curves.most_relevant_first, reference.most_relevant_first, atol=1e-5)
    assert np.allclose(curves.least_relevant_first, reference.least_relevant_first, atol=1e-5)
