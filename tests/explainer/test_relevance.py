"""The relevance contract (design.md §2), checked against slow references written from the formulas."""

from __future__ import annotations

import pytest
import torch

from explainer import Explainer
from explainer._capture import relevance_mode
from explainer._forward import embed_inputs
from explainer._sequence import SequenceError, sequence_layout
from explainer.methods.base import ExplainContext
from explainer.methods.chefer import propagate_rows
from tests.models import random_image
from tests.reference import chefer_reference, occlusion_reference, pixel_occlusion_reference

ANSWER = "The nodule is in the right upper zone."


def answer_positions(inputs, answer_tokens: int) -> list[int]:
    seq_len = inputs["input_ids"].shape[1]
    return list(range(seq_len - answer_tokens, seq_len))


def test_worked_example_from_the_seed_post():
    cam_1 = torch.tensor([[0.1, 0.3, 0.2], [0.2, 0.1, 0.4], [0.3, 0.2, 0.1]])
    cam_2 = torch.tensor([[0.2, 0.4, 0.1], [0.1, 0.2, 0.5], [0.4, 0.1, 0.2]])
    # R = I + Ā₁, then R + Ā₂R; row 2 by hand: [0.3, 0.2, 1.1] + 0.4·[1.1, .3, .2] + 0.1·[.2, 1.1, .4] + 0.2·[.3, .2, 1.1]
    start = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    rows = propagate_rows(start, [cam_1.expand(2, 3, 3), cam_2.expand(2, 3, 3)])
    assert torch.allclose(rows[0], torch.tensor([0.82, 0.47, 1.44]), atol=1e-6)
    assert torch.allclose(
        rows[1], torch.tensor([1.1, 0.3, 0.2]) + cam_2[0] @ (torch.eye(3) + cam_1), atol=1e-6
    )


@pytest.mark.parametrize(
    ("n_images", "system"),
    [(1, None), (2, None), (1, "You are an expert radiologist.")],
    ids=["one-image", "two-images", "system-prompt"],
)
def test_chefer_equals_slow_reference(tiny, n_images, system):
    explainer = Explainer(tiny.model, tiny.processor)
    images = [random_image(seed) for seed in range(n_images)]
    inputs = tiny.inputs(images, "Where is the nodule?", ANSWER, system=system)
    positions = answer_positions(inputs, 6)
    fast = explainer.relevance(inputs, positions)
    assert fast.dtype == torch.float32 and fast.device.type == "cpu" and not fast.requires_grad
    assert fast.shape == (len(positions), inputs["input_ids"].shape[1])
    for row, position in zip(fast, positions, strict=True):
        reference = chefer_reference(tiny.model, inputs, position)[position - 1]
        assert (reference - torch.eye(len(reference))[position - 1]).abs().max() > 1e-3  # not trivial
        assert torch.allclose(row, reference, atol=1e-6, rtol=0)


def test_layers_mix_sliding_and_full_attention_with_grouped_queries(tiny):
    text = tiny.config.text_config
    assert set(text.layer_types) == {"sliding_attention", "full_attention"}
    assert text.num_key_value_heads < text.num_attention_heads
    inputs = tiny.inputs([random_image(0)], "Where is the nodule?", ANSWER)
    assert inputs["input_ids"].shape[1] > text.sliding_window


def test_row_p_is_degenerate(tiny):
    inputs = tiny.inputs([random_image(0)], "Where is the nodule?", ANSWER)
    position = inputs["input_ids"].shape[1] - 3
    relevance = chefer_reference(tiny.model, inputs, position)
    unit = torch.zeros_like(relevance[position])
    unit[position] = 1.0
    # y = logits[p-1] cannot depend on anything at p or later: row p of R is just the identity's
    assert torch.equal(relevance[position], unit)
    assert relevance[position - 1][:position].sum() > relevance[position - 1][position - 1] - 1.0 > 0


def test_token_type_ids_are_built_from_the_image_token_id(tiny):
    explainer = Explainer(tiny.model, tiny.processor)
    inputs = tiny.inputs([random_image(0)], "Where is the nodule?", ANSWER)
    positions = answer_positions(inputs, 3)
    given = explainer.relevance(inputs, positions)
    without = {key: value for key, value in inputs.items() if key != "token_type_ids"}
    assert torch.equal(explainer.relevance(without, positions), given)
    causal_only = dict(without, token_type_ids=torch.zeros_like(inputs["input_ids"]))
    assert not torch.allclose(explainer.relevance(causal_only, positions), given)


def test_explain_forward_carries_the_bidirectional_image_block(tiny):
    explainer = Explainer(tiny.model, tiny.processor)
    inputs = explainer.prepare_inputs(tiny.inputs([random_image(0)], "Where is the nodule?", ANSWER))
    layout = sequence_layout(inputs["input_ids"], tiny.config)
    first, last = layout.image_token_runs[0][0].item(), layout.image_token_runs[0][-1].item()
    full_layer = tiny.config.text_config.layer_types.index("full_attention")
    with torch.no_grad(), relevance_mode(tiny.model) as recorder:
        context = ExplainContext(tiny.model, inputs, layout, recorder, 2**30)
        with context.recording() as maps:
            context.logits(context.embeddings())
        looks_ahead = maps[full_layer][0, :, first, last]  # first image token attending to the last one
        causal_inputs = dict(inputs, token_type_ids=torch.zeros_like(inputs["token_type_ids"]))
        causal_context = ExplainContext(tiny.model, causal_inputs, layout, recorder, 2**30)
        with causal_context.recording() as causal_maps:
            causal_context.logits(causal_context.embeddings())
        assert (looks_ahead > 0).all()
        assert (causal_maps[full_layer][0, :, first, last] == 0).all()


def test_embedding_path_reproduces_the_models_own_forward(tiny):
    explainer = Explainer(tiny.model, tiny.processor)
    inputs = explainer.prepare_inputs(tiny.inputs([random_image(0), random_image(1)], "Compare.", ANSWER))
    with torch.no_grad():
        own = tiny.model(**inputs, use_cache=False).logits
        ours = tiny.model(
            inputs_embeds=embed_inputs(tiny.model, inputs),
            attention_mask=inputs["attention_mask"],
            token_type_ids=inputs["token_type_ids"],
            use_cache=False,
        ).logits
    assert torch.allclose(own, ours, atol=1e-5)


def test_occlusion_equals_one_token_at_a_time_loop(tiny):
    explainer = Explainer(tiny.model, tiny.processor)
    inputs = explainer.prepare_inputs(tiny.inputs([random_image(0), random_image(1)], "Compare.", ANSWER))
    positions = answer_positions(inputs, 4)
    batched = explainer.relevance(inputs, positions, method="occlusion")
    layout = sequence_layout(inputs["input_ids"], tiny.config)
    embeddings = embed_inputs(tiny.model, inputs)
    for row, position in zip(batched, positions, strict=True):
        reference = occlusion_reference(tiny.model, embeddings, inputs, layout.image_token_runs, position)
        assert reference[layout.image_positions].abs().max() > 1e-4
        assert torch.allclose(row, reference, atol=1e-5)
        assert row[layout.text_positions].abs().max() == 0


def test_image_occlusion_spreads_each_whole_image_drop_over_its_tokens(tiny):
    explainer = Explainer(tiny.model, tiny.processor)
    images = [random_image(0), random_image(1), random_image(2)]
    inputs = explainer.prepare_inputs(tiny.inputs(images, "Compare.", ANSWER))
    positions = answer_positions(inputs, 3)
    batched = explainer.relevance(inputs, positions, method="image_occlusion")
    layout = sequence_layout(inputs["input_ids"], tiny.config)
    embeddings = embed_inputs(tiny.model, inputs)
    for row, position in zip(batched, positions, strict=True):
        token = inputs["input_ids"][0, position]
        with torch.no_grad():

            def score(embeds, position=position, token=token):
                output = tiny.model(
                    inputs_embeds=embeds,
                    attention_mask=inputs["attention_mask"],
                    token_type_ids=inputs["token_type_ids"],
                    use_cache=False,
                )
                return output.logits[0, position - 1, token]

            drops = []
            for run in layout.image_token_runs:  # the whole image at its mean embedding, one forward
                occluded = embeddings.clone()
                occluded[0, run] = embeddings[0, run].mean(dim=0)
                drops.append(score(embeddings) - score(occluded))
        for run, drop in zip(layout.image_token_runs, drops, strict=True):
            assert torch.allclose(row[run], torch.full((run.numel(),), float(drop) / run.numel()), atol=1e-6)
        assert max(abs(float(drop)) for drop in drops) > 1e-4 and row[layout.text_positions].abs().max() == 0


def test_pixel_occlusion_equals_a_whole_model_rerun_per_cell(tiny):
    explainer = Explainer(tiny.model, tiny.processor)
    inputs = explainer.prepare_inputs(tiny.inputs([random_image(0), random_image(1)], "Compare.", ANSWER))
    positions = answer_positions(inputs, 3)
    batched = explainer.relevance(inputs, positions, method="pixel_occlusion")
    one_copy = Explainer(tiny.model, max_chunk_bytes=1).relevance(inputs, positions, "pixel_occlusion")
    layout = sequence_layout(inputs["input_ids"], tiny.config)
    assert batched.shape == (3, layout.seq_len) and batched.dtype == torch.float32
    assert torch.allclose(batched, one_copy, atol=1e-5)  # one copy per forward: the same numbers
    for row, position in zip(batched, positions, strict=True):
        references = pixel_occlusion_reference(tiny.model, inputs, position, layout.grid)
        for run, reference in zip(layout.image_token_runs, references, strict=True):
            assert reference.abs().max() > 1e-4  # not trivially zero
            assert torch.allclose(row[run], reference.flatten(), atol=1e-5)
        assert row[layout.text_positions].abs().max() == 0


def test_rollout_and_raw_attention_follow_their_formulas(tiny):
    explainer = Explainer(tiny.model, tiny.processor)
    inputs = tiny.inputs([random_image(0)], "Where is the nodule?", ANSWER)
    position = inputs["input_ids"].shape[1] - 2
    with torch.no_grad():
        attentions = tiny.model(**inputs, output_attentions=True, use_cache=False).attentions
    seq_len = inputs["input_ids"].shape[1]
    rollout = torch.eye(seq_len)
    for attention in attentions:
        mixed = 0.5 * attention[0].mean(dim=0) + 0.5 * torch.eye(seq_len)
        rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
    assert torch.allclose(
        explainer.relevance(inputs, [position], "rollout")[0], rollout[position - 1], atol=1e-6
    )
    raw = attentions[-1][0].mean(dim=0)[position - 1]
    assert torch.allclose(explainer.relevance(inputs, [position], "raw_attention")[0], raw, atol=1e-6)


def test_medgemma_layer_pattern_explains_a_token(medgemma_pattern):
    text = medgemma_pattern.config.text_config
    full_layers = [index for index, kind in enumerate(text.layer_types) if kind == "full_attention"]
    assert (text.num_hidden_layers, full_layers) == (34, [5, 11, 17, 23, 29])
    assert (text.num_attention_heads, text.num_key_value_heads) == (8, 4)
    explainer = Explainer(medgemma_pattern.model, medgemma_pattern.processor)
    inputs = medgemma_pattern.inputs([random_image(0)], "Where is the nodule?", ANSWER)
    layout = sequence_layout(inputs["input_ids"], medgemma_pattern.config)
    assert layout.grid == (16, 16) and layout.seq_len > text.sliding_window
    position = layout.seq_len - 2
    row = explainer.relevance(inputs, [position])[0]
    reference = chefer_reference(medgemma_pattern.model, inputs, position)[position - 1]
    assert torch.allclose(row, reference, atol=1e-5)
    assert row[layout.image_positions].sum() > 0


def test_bad_requests_raise_clear_errors(tiny):
    explainer = Explainer(tiny.model, tiny.processor)
    inputs = tiny.inputs([random_image(0)], "Where is the nodule?", ANSWER)
    seq_len = inputs["input_ids"].shape[1]
    with pytest.raises(SequenceError, match=r"\[1, "):
        explainer.relevance(inputs, [0])
    with pytest.raises(SequenceError, match=str(seq_len)):
        explainer.relevance(inputs, [seq_len])
    with pytest.raises(ValueError, match="valid methods"):
        explainer.relevance(inputs, [seq_len - 1], method="lrp")
    doubled = {key: torch.cat([value, value]) for key, value in inputs.items()}
    with pytest.raises(SequenceError, match="one sequence"):
        explainer.relevance(doubled, [seq_len - 1])


@pytest.mark.parametrize("method", ["chefer", "rollout", "raw_attention", "occlusion"])
def test_logits_are_computed_only_at_the_rows_targets_read(tiny, method):
    """Gemma's vocabulary is 262k: logits (and their gradients) of every row would dwarf the forward."""
    explainer = Explainer(tiny.model, tiny.processor)
    inputs = tiny.inputs([random_image(0)], "Where is the nodule?", ANSWER)
    positions = answer_positions(inputs, 3)
    rows_projected = []
    handle = tiny.model.lm_head.register_forward_hook(
        lambda _module, args, _output: rows_projected.append(args[0].shape[1])
    )
    try:
        explainer.relevance(inputs, positions, method=method)
    finally:
        handle.remove()
    expected = 0 if method in ("rollout", "raw_attention") else len(positions)
    assert rows_projected and set(rows_projected) == {expected}
