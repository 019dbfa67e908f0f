"""`explainer.memory`: the plans agree with the estimates they are made from."""

from __future__ import annotations

from explainer import memory


def test_a_chunk_holds_as_many_targets_as_the_budget_and_a_batch_divides_it(tiny):
    model, seq_len = tiny.model, 40
    # the float32 part of the eager estimate is one target's gradients, products and Ā
    per_target = (
        memory.eager_attention_bytes(model, seq_len)
        - memory.attention_map_entries(model, seq_len) * model.dtype.itemsize
    )
    assert memory.targets_per_chunk(model, seq_len, 5 * per_target) == 5
    assert memory.targets_per_chunk(model, seq_len, 5 * per_target, batch=2) == 2
    assert memory.targets_per_chunk(model, seq_len, per_target - 1) == 1  # at least one


def test_a_batch_fits_when_its_padded_maps_fit_the_budget(tiny):
    model = tiny.model
    budget = 3 * memory.eager_attention_bytes(model, 50)
    assert memory.eager_batch_fits(model, [10, 30, 50], budget)
    assert not memory.eager_batch_fits(model, [10, 30, 51], budget)  # padded to the longest
    assert memory.attention_path(model, 50, "auto", budget, batch=3) == "eager"
    assert memory.attention_path(model, 50, "auto", budget, batch=4) == "blockwise"


def test_the_blockwise_estimate_counts_one_block_of_the_rows_it_uses(tiny):
    model, seq_len, budget = tiny.model, 1000, 2**30
    rows = memory.block_rows(model, seq_len, budget)
    assert rows == memory.DEFAULT_BLOCK_ROWS
    smaller = memory.block_rows(model, seq_len, budget // 1000)
    assert smaller < rows
    saved = memory.blockwise_bytes(model, seq_len, budget) - memory.blockwise_bytes(
        model, seq_len, budget // 1000
    )
    heads = model.config.get_text_config().num_attention_heads
    assert saved == memory.BLOCK_VALUES * memory.FLOAT32_BYTES * heads * seq_len * (rows - smaller)
