"""Attention-routing terms and the attention-blocking helper."""

import math

import pytest
import torch

from phantom import sample
from phantom.training.data import build_phantom_processor, encode
from phantom.training.evaluate import MODEL_INPUTS, block_attention
from phantom.training.probe import capture_image_embeddings, cell_labels
from phantom.training.routing import (
    RoutingWeights,
    answer_rows,
    capture_vision_attention,
    cell_keys,
    occlude_image_tokens,
    routing_loss,
)
from phantom.training.train import new_model, occlusion_terms, one_cell_each


def test_answer_rows_are_the_positions_before_answer_words():
    labels = torch.tensor([[-100, -100, 7, 8, 5, -100]])  # 5 = <end_of_turn> here
    assert answer_rows(labels, end_of_turn_id=5).tolist() == [[False, True, True, False, False, False]]


def test_cell_keys_put_grid_cell_k_on_the_kth_image_token():
    types = torch.tensor([[0, 1, 1, 1, 1, 0]])
    cells = torch.tensor([[False, False, True, False]])
    assert cell_keys(types, cells).tolist() == [[False, False, False, True, False, False]]


def test_answer_term_is_minus_log_of_the_head_mean_mass_on_the_object():
    # one sequence: [text, img0, img1, text, answer-row, answer]; the object is image cell 1
    types = torch.tensor([[0, 1, 1, 0, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, -100, -100, 9]])
    attention = torch.full((1, 2, 6, 6), 1 / 6)
    attention[0, 0, 4] = torch.tensor([0.1, 0.1, 0.6, 0.1, 0.1, 0.0])  # head 0 of the answer row
    batch = {"token_type_ids": types, "attention_mask": torch.ones_like(types), "labels": labels}
    batch["object_cells"] = torch.tensor([[False, True]])
    loss, terms = routing_loss((attention,), [], batch, RoutingWeights(answer=1.0, answer_layers=1), 5)
    assert terms["answer"] == pytest.approx(-math.log((0.6 + 1 / 6) / 2))
    assert float(loss) == pytest.approx(terms["answer"])


def _two_images():
    """[text, label0, a0, a1, label1, b0, b1, text, answer-row, answer]: two 2-cell images, each
    after its one-token label; the nodule is cell 1 of image a and cell 0 of image b."""
    types = torch.tensor([[0, 0, 1, 1, 0, 1, 1, 0, 0, 0]])
    return {
        "token_type_ids": types,
        "attention_mask": torch.ones_like(types),
        "labels": torch.tensor([[-100] * 9 + [9]]),
        "object_cells": torch.tensor([[False, True, True, False]]),
        "image_index": torch.tensor([[0, 0, 1, 1, 0, 2, 2, 0, 0, 0]]),
        "label_index": torch.tensor([[0, 1, 0, 0, 2, 0, 0, 0, 0, 0]]),
    }


def test_per_image_answer_term_asks_every_image_to_be_read_by_its_own_heads():
    batch = _two_images()
    attention = torch.full((1, 4, 10, 10), 0.1)
    attention[0, :2, 8] = torch.tensor([0.2, 0, 0, 0.8, 0, 0, 0, 0, 0, 0])  # heads 0–1: image a's nodule
    attention[0, 2:, 8] = torch.tensor([0.1, 0, 0, 0, 0, 0.4, 0.5, 0, 0, 0])  # heads 2–3: image b's, 0.4
    weights = RoutingWeights(answer=1.0, answer_layers=1)
    _, union = routing_loss((attention,), [], batch, weights, 5)
    assert union["answer"] == pytest.approx(-math.log((0.8 + 0.4) / 2))  # one mass over both images
    _, per_image = routing_loss((attention,), [], batch, weights, 5, cells_per_image=2)
    assert per_image["answer"] == pytest.approx(-(math.log(0.4) + math.log(0.2)) / 2)  # head means
    by_heads = RoutingWeights(answer=1.0, answer_layers=1, image_heads=((0, 1), (2, 3)))
    _, own_heads = routing_loss((attention,), [], batch, by_heads, 5, cells_per_image=2)
    assert own_heads["answer"] == pytest.approx(-(math.log(0.8) + math.log(0.4)) / 2)


def test_label_term_asks_image_tokens_to_read_their_own_label():
    batch = _two_images()
    attention = torch.zeros((1, 2, 10, 10))
    attention[0, :, [2, 3], 1] = 1.0  # image a's tokens read label a
    attention[0, :, [5, 6], 4] = 0.5  # image b's tokens half on label b ...
    attention[0, :, [5, 6], 1] = 0.5  # ... half on label a, which is not theirs
    _, terms = routing_loss((attention,), [], batch, RoutingWeights(answer=0.0, label=1.0), 5)
    assert terms["label"] == pytest.approx(-(math.log(1.0) + math.log(0.5)) / 2)


def test_question_term_covers_labels_between_images():
    batch = _two_images()
    attention = torch.zeros((1, 1, 10, 10))
    attention[0, 0, :, 0] = 1.0
    attention[0, 0, 4] = torch.tensor([0.5, 0, 0.5, 0, 0, 0, 0, 0, 0, 0])  # label b reads image a
    _, terms = routing_loss((attention,), [], batch, RoutingWeights(answer=0.0, text=1.0), 5)
    # text rows after the first image that predict no answer word: label b (4), 7, 9
    assert terms["text"] == pytest.approx(-math.log(0.5) / 3)


def test_a_vanishing_mass_still_gets_a_gradient():
    types = torch.tensor([[0, 1, 1, 0, 0, 0]])
    logits = torch.zeros(1, 1, 6, 6, requires_grad=True)
    bias = torch.zeros(6)
    bias[2] = -40.0  # the object's key gets ~e-40 of the answer row
    attention = (logits + bias).softmax(-1)
    batch = {
        "token_type_ids": types,
        "attention_mask": torch.ones_like(types),
        "labels": torch.tensor([[-100, -100, -100, -100, -100, 9]]),
        "object_cells": torch.tensor([[False, True]]),
    }
    loss, _ = routing_loss((attention,), [], batch, RoutingWeights(answer=1.0, answer_layers=1), 5)
    loss.backward()
    assert logits.grad[0, 0, 4, 2] < 0  # raising the object's logit lowers the loss


@pytest.fixture(scope="module")
def tiny():
    processor = build_phantom_processor()
    return new_model(processor, seed=0).eval(), encode(sample(2, 0, tasks=("locate",)), processor)


def test_capture_vision_attention_collects_siglip_maps_and_removes_its_hooks(tiny):
    model, encoded = tiny
    inputs = {k: v for k, v in encoded.batch(slice(0, 2)).items() if k in MODEL_INPUTS}
    with pytest.raises(RuntimeError), capture_vision_attention(model) as captured:
        model(**inputs)
        assert [tuple(a.shape) for a in captured] == [(2, 4, 64, 64)] * 2
        raise RuntimeError("hooks must go even on error")
    assert all(not m._forward_hooks for m in model.modules())


def test_block_attention_zeroes_exactly_the_blocked_pairs_and_cleans_up(tiny):
    model, encoded = tiny
    inputs = {k: v for k, v in encoded.batch(slice(0, 1)).items() if k in MODEL_INPUTS}
    length = inputs["input_ids"].shape[1]
    blocked = torch.zeros(1, length, length, dtype=torch.bool)
    image = torch.nonzero(inputs["token_type_ids"][0]).squeeze(1)
    blocked[0, length - 3, image[:10]] = True
    with torch.no_grad(), block_attention(model, blocked):
        attentions = model(**inputs, output_attentions=True).attentions
    for layer in attentions:
        assert float(layer[0, :, length - 3, image[:10]].abs().max()) == 0.0
        assert float(layer[0, :, length - 3, image[10:]].sum()) > 0
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_hub_uniform_term_is_zero_for_uniform_hub_rows_and_positive_when_peaked():
    # [text, img0, img1, img2, img3, text]; the hub is image cell 0 (sequence position 1)
    types = torch.tensor([[0, 1, 1, 1, 1, 0]])
    batch = {
        "token_type_ids": types,
        "attention_mask": torch.ones_like(types),
        "labels": torch.full((1, 6), -100),
        "object_cells": torch.tensor([[False, False, True, False]]),
    }
    weights = RoutingWeights(hub=(0,), hub_uniform=1.0, hub_layer=0)
    uniform = torch.zeros(1, 2, 6, 6)
    uniform[..., 1:5] = 0.25
    _, terms = routing_loss((uniform,), [], batch, weights, 5)
    assert terms["hub_uniform"] == pytest.approx(0.0, abs=1e-4)
    peaked = uniform.clone()
    peaked[0, :, 1, 1:5] = torch.tensor([0.97, 0.01, 0.01, 0.01])
    _, terms = routing_loss((peaked,), [], batch, weights, 5)
    assert terms["hub_uniform"] > 1.0


def test_cell_labels_tag_the_asked_objects_cells_with_its_zone():
    cells = torch.tensor([[False, True, True, False], [True, False, False, False]])
    labels = cell_labels(cells, object_zone=torch.tensor([4, -1]))
    assert labels.tolist() == [[0, 5, 5, 0], [0, 0, 0, 0]]


def test_occlude_image_tokens_replaces_chosen_embeddings_by_the_image_mean_and_cleans_up(tiny):
    model, encoded = tiny
    inputs = {k: v for k, v in encoded.batch(slice(0, 2)).items() if k in MODEL_INPUTS}
    with torch.no_grad(), capture_image_embeddings(model) as plain:
        model(**inputs)
    cells = torch.zeros(2, 64, dtype=torch.bool)
    cells[0, [3, 4]] = True
    with torch.no_grad(), occlude_image_tokens(model, cells), capture_image_embeddings(model) as seen:
        model(**inputs)
    mean = plain[0][0].mean(dim=0)
    assert torch.allclose(seen[0][0, 3], mean, atol=1e-6) and torch.allclose(seen[0][0, 4], mean, atol=1e-6)
    assert torch.equal(seen[0][0, 5:], plain[0][0, 5:]) and torch.equal(seen[0][1], plain[0][1])
    assert not model.model.multi_modal_projector._forward_hooks


def test_one_cell_each_draws_one_of_each_rows_cells():
    cells = torch.zeros(3, 64, dtype=torch.bool)
    cells[0, [9, 10, 17, 18]] = True
    cells[1, 40] = True
    chosen = one_cell_each(cells, torch.Generator().manual_seed(0))
    assert chosen.sum(dim=1).tolist() == [1, 1, 0]
    assert not (chosen & ~cells).any()
    draws = {int(one_cell_each(cells, torch.Generator().manual_seed(s))[0].nonzero()) for s in range(40)}
    assert draws == {9, 10, 17, 18}


def test_occlusion_terms_hinge_on_the_answer_drop_and_square_the_hub_change():
    end_of_turn = 7
    labels = torch.tensor([[-100, -100, 3, 4, end_of_turn], [-100, -100, 5, end_of_turn, -100]])
    clean = torch.zeros(2, 5, 10)
    clean[0, 1, 3], clean[0, 2, 4], clean[0, 3, end_of_turn] = 2.0, 1.0, 5.0  # answer score 3
    occluded = clean.clone()
    occluded[0, 1, 3] = 1.75  # example 0 (an object cell occluded): the answer drops by 0.25
    occluded[0, 3, end_of_turn] = 0.0  # <end_of_turn> is not part of the answer's score
    occluded[1, 1, 5] = 0.5  # example 1 (hubs occluded): one label logit moves by 0.5
    on_object = torch.tensor([True, False])
    invariance, necessity = occlusion_terms(clean, occluded, labels, on_object, end_of_turn, margin=1.0)
    assert necessity.item() == pytest.approx(0.75)  # margin 1 − drop 0.25
    assert invariance.item() == pytest.approx(0.25 / 2)  # (−0.5)² over example 1's two label tokens
    none_on_object = occlusion_terms(clean, occluded, labels, torch.tensor([False, False]), end_of_turn, 1.0)
    assert none_on_object[1].item() == 0.0
