"""The blockwise path (explainer/blockwise.py) against the eager one: same numbers, no L×L tensor."""

from __future__ import annotations

import pytest
import torch
from transformers.masking_utils import and_masks, causal_mask_function, sdpa_mask, sliding_window_overlay

from explainer import Explainer, blockwise
from explainer.blockwise import DEFAULT_BLOCK_ROWS, MaskDescription, RelevanceTap, register, tapping
from explainer.memory import RelevanceMemoryError, eager_attention_bytes
from explainer.targets import Target
from phantom.build import TinyGemma3Spec
from tests.models import TinyVLM, random_image

QUESTION = "Compare the two images. Where is the nodule?"
ANSWER = "The left middle zone opacity has grown."


@pytest.fixture(scope="module")
def windowed() -> TinyVLM:
    """4×4 image grids (16 tokens, longer than the window 6 and than the blocks below), 8 query heads
    sharing 2 KV heads, two full-attention layers among six."""
    spec = TinyGemma3Spec(
        num_attention_heads=8,
        num_key_value_heads=2,
        sliding_window=6,
        layer_types=("sliding_attention", "sliding_attention", "full_attention") * 2,
        mm_tokens_per_image=16,
        initializer_range=0.2,
    )
    return TinyVLM(spec, seed=4)


def _inputs(vlm: TinyVLM, n_images: int) -> dict[str, torch.Tensor]:
    return dict(vlm.inputs([random_image(seed) for seed in range(n_images)], QUESTION, ANSWER))


def _targets(seq_len: int) -> list:
    return [seq_len - 1, seq_len - 4, Target(tuple(range(seq_len - 6, seq_len)))]


def _explainer(vlm: TinyVLM, block_rows: int, seq_len: int) -> Explainer:
    """An explainer whose memory budget gives blocks of `block_rows` query rows."""
    heads = vlm.config.text_config.num_attention_heads
    return Explainer(vlm.model, vlm.processor, max_chunk_bytes=32 * heads * seq_len * block_rows)


@pytest.mark.parametrize("method", ["chefer", "rollout", "raw_attention"])
@pytest.mark.parametrize("block_rows", [3, 7, 10_000])
def test_blockwise_relevance_equals_the_eager_maps(windowed, method, block_rows):
    inputs = _inputs(windowed, 3)
    seq_len = inputs["input_ids"].shape[1]
    assert seq_len > 4 * windowed.config.text_config.sliding_window  # the window cuts the sequence
    explainer = _explainer(windowed, block_rows, seq_len)
    eager = explainer.relevance(inputs, _targets(seq_len), method, attention="eager")
    blockwise = explainer.relevance(inputs, _targets(seq_len), method, attention="blockwise")
    assert (eager.abs().max(dim=1).values > 0).all()
    torch.testing.assert_close(blockwise, eager, rtol=1e-5, atol=1e-5 * eager.abs().max().item())


def test_blockwise_chefer_on_medgemmas_layer_pattern(medgemma_pattern):
    """34 layers, 5 global, 8 query / 4 KV heads, 16×16 grids: two images of 256 tokens."""
    inputs = _inputs(medgemma_pattern, 2)
    seq_len = inputs["input_ids"].shape[1]
    explainer = _explainer(medgemma_pattern, 96, seq_len)
    eager = explainer.relevance(inputs, _targets(seq_len), "chefer", attention="eager")
    blockwise = explainer.relevance(inputs, _targets(seq_len), "chefer", attention="blockwise")
    torch.testing.assert_close(blockwise, eager, rtol=1e-5, atol=1e-5 * eager.abs().max().item())


def test_blocks_hold_at_most_256_query_rows_within_the_budget(medgemma_pattern):
    """A generous budget no longer makes a whole prompt of a few images one block (full L×L scores
    in every layer, memory growing with L²); a tight one still bounds the rows."""
    inputs = _inputs(medgemma_pattern, 2)
    seq_len = inputs["input_ids"].shape[1]
    explainer = Explainer(medgemma_pattern.model, medgemma_pattern.processor)  # 2 GiB: every row fits
    with explainer.context(inputs, "blockwise") as context:
        assert context.block_rows() == DEFAULT_BLOCK_ROWS == 256 < seq_len
    with _explainer(medgemma_pattern, 7, seq_len).context(inputs, "blockwise") as context:
        assert context.block_rows() == 7


def test_the_blockwise_forward_keeps_no_attention_map(windowed):
    """What autograd saves for the backward grows with L, never with L²: the eager path saves
    [1, heads, L, L] maps, the blockwise path no tensor with two dimensions of length L."""
    inputs = _inputs(windowed, 3)
    seq_len = inputs["input_ids"].shape[1]
    explainer = _explainer(windowed, 8, seq_len)

    def square_saved(attention: str) -> list[tuple[int, ...]]:
        """Shapes of saved tensors with two dimensions of length L (an attention map's)."""
        shapes = []

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            if list(tensor.shape).count(seq_len) >= 2:
                shapes.append(tuple(tensor.shape))
            return tensor

        with explainer.context(inputs, attention) as context:
            embeddings = context.embeddings().detach().requires_grad_(True)
            with (
                torch.enable_grad(),
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
                tapping(RelevanceTap(context.block_rows())),
            ):
                context.logits(embeddings, torch.tensor([seq_len - 1]))
        return shapes

    heads = windowed.config.text_config.num_attention_heads
    assert (1, heads, seq_len, seq_len) in square_saved("eager")
    assert square_saved("blockwise") == []


def test_the_mask_description_is_transformers_own_mask(windowed):
    """Rows evaluated from the description equal the mask eager attention adds (sliding window,
    causal, image blocks bidirectional), for both layer types."""
    inputs = Explainer(windowed.model, windowed.processor).prepare_inputs(_inputs(windowed, 2))
    seen = {}

    def keep(kind):
        def hook(module, args, kwargs):
            seen.setdefault(kind, kwargs["attention_mask"])

        return hook

    layers = windowed.model.model.language_model.layers
    handles = [
        layers[index].self_attn.register_forward_pre_hook(keep(kind), with_kwargs=True)
        for index, kind in ((0, "sliding"), (2, "full"))
    ]
    try:
        with torch.no_grad():
            windowed.model.set_attn_implementation({"text_config": "eager"})
            windowed.model(**inputs, use_cache=False)
            eager = dict(seen)
            seen.clear()
            windowed.model.set_attn_implementation({"text_config": register()})
            windowed.model(**inputs, use_cache=False)
    finally:
        windowed.model.set_attn_implementation({"text_config": "eager"})
        for handle in handles:
            handle.remove()
    seq_len = inputs["input_ids"].shape[1]
    for kind in ("sliding", "full"):
        description = seen[kind]
        assert isinstance(description, MaskDescription)
        description.rows(0, 5)
        assert description.broadcastable  # transformers' own mask functions are index-based
        allowed = eager[kind] == 0  # eager's additive mask: 0 where attention is allowed
        assert torch.equal(
            torch.cat([description.rows(s, min(s + 5, seq_len)) for s in range(0, seq_len, 5)], 2), allowed
        )
    assert not torch.equal(seen["sliding"].rows(0, seq_len), seen["full"].rows(0, seq_len))


def test_a_mask_function_that_needs_vmap_is_evaluated_under_vmap():
    """Broadcasting is only used for index-based mask functions (transformers' own are)."""

    def scalar_only(batch, head, q_index, kv_index):
        return (kv_index <= q_index).reshape(())  # fails on broadcast index tensors

    description = MaskDescription(
        {"batch_size": 1, "q_length": 6, "kv_length": 6, "mask_function": scalar_only, "device": "cpu"}
    )
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    assert torch.equal(description.rows(0, 3)[0, 0], causal[:3])
    assert description.broadcastable is False
    assert torch.equal(description.rows(3, 6)[0, 0], causal[3:])


def _evaluated_widths(monkeypatch, mask_function, length: int, rows: int, layers: int = 3):
    """Blocks of `rows` rows of a description of `mask_function`, evaluated for `layers` layers (each
    checked against the whole mask): their (first_key, stop_key) and the widths evaluated."""
    widths = []

    def spy(**arguments):
        widths.append(arguments["kv_length"])
        return sdpa_mask(**arguments)

    monkeypatch.setattr(blockwise, "sdpa_mask", spy)
    description = MaskDescription(
        {
            "batch_size": 1,
            "q_length": length,
            "kv_length": length,
            "mask_function": mask_function,
            "device": "cpu",
        }
    )
    whole = sdpa_mask(
        batch_size=1,
        q_length=length,
        kv_length=length,
        mask_function=mask_function,
        allow_is_causal_skip=False,
    )
    spans = []
    for _layer in range(layers):
        spans = []
        for start in range(0, length, rows):
            first, stop, allowed = description.block(start, start + rows)
            assert torch.equal(allowed, whole[..., start : start + rows, first:stop])
            spans.append((first, stop))
    return spans, widths


def test_a_block_evaluates_its_mask_once_per_forward_then_rebuilds_it_from_runs(monkeypatch):
    """One description serves every layer of its type and their backwards: after a block's first
    evaluation over every key, each row's run of allowed keys (a sliding window here) rebuilds the
    block's mask over its span (window and block, not all L keys); the mask function is not called
    again."""
    window, length, rows = 6, 40, 8
    sliding = and_masks(causal_mask_function, sliding_window_overlay(window))
    spans, widths = _evaluated_widths(monkeypatch, sliding, length, rows)
    assert spans == [(max(0, start - window + 1), start + rows) for start in range(0, length, rows)]
    # the first layer only; its first block also under vmap (to learn that it may broadcast)
    assert widths == [length] * (len(spans) + 1)


def test_rows_that_are_not_one_run_are_evaluated_over_the_span(monkeypatch):
    def hole(batch_idx, head_idx, q_idx, kv_idx):
        return kv_idx != 3

    length, rows = 24, 8
    spans, widths = _evaluated_widths(monkeypatch, and_masks(causal_mask_function, hole), length, rows)
    assert spans == [(0, start + rows) for start in range(0, length, rows)]
    assert widths[len(spans) + 1 :] == [stop for _, stop in spans] * 2


def test_auto_takes_eager_within_the_budget_and_blockwise_beyond(windowed):
    explainer = Explainer(windowed.model, windowed.processor)
    budget = eager_attention_bytes(windowed.model, 100)
    explainer.max_chunk_bytes = budget
    assert explainer.attention_path(100) == "eager"
    assert explainer.attention_path(101) == "blockwise"
    assert explainer.attention_path(101, "eager") == "eager"  # an explicit path is kept when it fits


def test_a_prompt_that_cannot_fit_says_its_length_need_and_the_option(windowed):
    explainer = Explainer(windowed.model, windowed.processor, attention="eager")
    with pytest.raises(RelevanceMemoryError, match=r"2,000,000 tokens.*GiB.*attention='blockwise'"):
        explainer.attention_path(2_000_000)
    with pytest.raises(ValueError, match="not one of auto, eager, blockwise"):
        Explainer(windowed.model, windowed.processor, attention="flash")


def test_explain_generates_and_explains_on_the_blockwise_path(windowed):
    """The same greedy answer and maps as the eager path; the model's attention is restored after."""
    explainer = Explainer(windowed.model, windowed.processor)
    images = [random_image(0), random_image(1)]
    eager = explainer.explain(images, QUESTION, max_new_tokens=6, attention="eager")
    blockwise = explainer.explain(images, QUESTION, max_new_tokens=6, attention="blockwise")
    assert blockwise.answer == eager.answer and len(eager.tokens) > 0
    for ours, theirs in zip(blockwise.image_maps, eager.image_maps, strict=True):
        torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(theirs), rtol=1e-5, atol=1e-6)
    assert windowed.model.config.text_config._attn_implementation == "eager"


def test_the_blockwise_context_records_no_maps(windowed):
    explainer = Explainer(windowed.model, windowed.processor)
    with (
        explainer.context(_inputs(windowed, 1), "blockwise") as context,
        pytest.raises(RuntimeError, match="eager path only"),
    ):
        context.recording().__enter__()
