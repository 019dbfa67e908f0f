"""The faithfulness sample: stable selection, and rows that fit the faithfulness table."""

from __future__ import annotations

import torch

from explainer import Explainer, generation
from explainer.methods import IMAGE_REFERENCE, METHODS, REFERENCE_METHODS
from storage import to_arrow
from tasks.faithfulness_sample import check_item
from tasks.shards import sampled_item_ids
from tests.models import random_image


def test_the_sample_is_stable_and_of_the_asked_size():
    items = [f"item-{i}" for i in range(50)]
    sample = sampled_item_ids(items, 7, seed="run-1")
    assert len(sample) == 7 and sample <= set(items)
    assert (
        sampled_item_ids(reversed(items), 7, seed="run-1") == sample
    )  # order of the manifest does not matter
    assert sampled_item_ids(items, 7, seed="run-2") != sample
    assert sampled_item_ids(items, 0) == set()


def test_checked_items_give_rows_for_every_method_and_checked_target(tiny, monkeypatch):
    explainer = Explainer(tiny.model, tiny.processor)
    ids = torch.tensor(tiny.tokenizer("right upper zone", add_special_tokens=False)["input_ids"])
    monkeypatch.setattr(generation, "generate_answer", lambda *args, **kwargs: ids)
    explanation = explainer.explain(random_image(0), "Where is the nodule?", targets="all")
    rows = check_item(explainer, "item-1", explanation, findings=("upper", "nodule"))
    table = to_arrow("faithfulness", rows).to_pandas()
    assert set(zip(table["target_kind"], table["word"].fillna("-"), strict=True)) == {
        ("answer", "-"),
        ("word", "upper"),
    }
    # both cell-level references included; image occlusion only for prompts of several images
    assert sorted(table["method"].unique()) == sorted(m for m in METHODS if m != IMAGE_REFERENCE)
    occlusion = table[table["method"] == "occlusion"]
    assert occlusion["spearman_vs_occlusion"].min() > 0.999
    references = table[table["method"].isin(REFERENCE_METHODS)]
    assert references["randomization_spearman"].isna().all()  # a reference is not randomised
    assert table[table["method"] == "chefer"]["randomization_spearman"].notna().all()
