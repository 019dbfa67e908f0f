"""`Explainer.explain_batch`: several items generated and explained together give the outputs of one
at a time (the shipped phantom models), and a failing item fails alone."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # the shipped models must load without a network

import numpy as np
import pytest
import torch

from explainer import Explainer
from explainer.engine import ExplainRequest
from explainer.generation import GenerationError
from phantom import MODEL_PATH, STUDY_MODEL_PATH, sample, sample_studies

SEED = 20_020  # held out: training uses seeds < 10_000, the reports 20_000, the benches 21_000 and up
OPTIONS = {"max_new_tokens": 6, "targets": ["nodule", "yes", "no", "right", "left", "upper", "zone"]}


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer.from_pretrained(MODEL_PATH)


@pytest.fixture(scope="module")
def requests() -> list[ExplainRequest]:
    """Presence and location questions (answers of 1 and 3 tokens), one logged answer."""
    cases = sample(8, SEED, tasks=("presence", "locate"))
    items = [ExplainRequest(case.image, case.question) for case in cases]
    items[4] = ExplainRequest(cases[4].image, cases[4].question, answer="right upper zone")
    return items


@pytest.fixture(scope="module")
def one_at_a_time(explainer, requests) -> list:
    return explainer.explain_batch(requests, batch_size=1, **OPTIONS)


def assert_same(batched, single, atol: float = 1e-5) -> None:
    assert len(batched) == len(single)
    for got, want in zip(batched, single, strict=True):
        if isinstance(want, Exception):
            assert type(got) is type(want) and str(got) == str(want)
            continue
        assert got.answer == want.answer and [t.id for t in got.tokens] == [t.id for t in want.tokens]
        assert got.targets == want.targets and got.prompt_tokens == want.prompt_tokens
        for got_map, want_map in zip(got.image_maps, want.image_maps, strict=True):
            np.testing.assert_allclose(got_map, want_map, rtol=0, atol=atol)
        np.testing.assert_allclose(got.text_relevance, want.text_relevance, rtol=0, atol=atol)


@pytest.mark.parametrize("batch_size", [4, 8])
def test_batches_give_the_answers_and_maps_of_one_item_at_a_time(
    explainer, requests, one_at_a_time, batch_size, monkeypatch
):
    assert len({len(e.tokens) for e in one_at_a_time}) > 1  # sequences of different lengths: padded
    assert one_at_a_time[4].answer == "right upper zone"
    # every item's relevance comes from a batch: no fallback to one item at a time
    monkeypatch.setattr(
        explainer, "relevance", lambda *a, **k: pytest.fail("relevance ran one item at a time")
    )
    assert_same(explainer.explain_batch(requests, batch_size=batch_size, **OPTIONS), one_at_a_time)


def test_explain_is_a_batch_of_one(explainer, requests, one_at_a_time):
    assert_same([explainer.explain(requests[0].images, requests[0].question, **OPTIONS)], one_at_a_time[:1])


def test_a_bad_question_fails_alone_and_the_rest_of_its_batch_is_unchanged(
    explainer, requests, one_at_a_time
):
    bad = [
        ExplainRequest(requests[1].images, "Is there <start_of_turn> a nodule?"),
        ExplainRequest(requests[2].images, "nodule " * 40),
    ]
    batch = [*requests[:3], *bad, *requests[3:]]
    outcomes = explainer.explain_batch(batch, batch_size=8, max_question_tokens=30, **OPTIONS)
    assert [type(outcome) for outcome in outcomes[3:5]] == [GenerationError, GenerationError]
    assert "chat control token" in str(outcomes[3]) and "over the limit of 30" in str(outcomes[4])
    assert_same(outcomes[:3] + outcomes[5:], one_at_a_time)


def test_a_failing_batch_is_redone_item_by_item_and_only_the_failing_item_errs(
    explainer, requests, one_at_a_time, monkeypatch
):
    def no_batch(*args, **kwargs):
        raise torch.OutOfMemoryError("batch does not fit")

    generate = explainer.model.generate

    def generate_one(**inputs):
        return no_batch() if len(inputs["input_ids"]) > 1 else generate(**inputs)

    monkeypatch.setattr(explainer.model, "generate", generate_one)
    monkeypatch.setattr(explainer, "relevance_batch", no_batch)
    relevance, calls = explainer.relevance, []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("item 1 does not fit")
        return relevance(*args, **kwargs)

    monkeypatch.setattr(explainer, "relevance", second_fails)
    outcomes = explainer.explain_batch(requests, batch_size=8, **OPTIONS)
    assert isinstance(outcomes[1], torch.OutOfMemoryError) and len(calls) == len(requests)
    assert_same(outcomes[:1] + outcomes[2:], one_at_a_time[:1] + one_at_a_time[2:])


def test_studies_of_several_images_batch_with_their_labels(monkeypatch):
    explainer = Explainer.from_pretrained(STUDY_MODEL_PATH)
    studies = sample_studies(2, SEED, kind="longitudinal") + sample_studies(1, SEED, kind="volume")
    requests = [ExplainRequest(case.images, case.question, case.image_labels) for case in studies]
    options = {"max_new_tokens": 4, "targets": "answer"}
    single = explainer.explain_batch(requests, batch_size=1, **options)
    assert {len(e.image_maps) for e in single} == {2, 9}
    monkeypatch.setattr(
        explainer, "relevance", lambda *a, **k: pytest.fail("relevance ran one item at a time")
    )
    assert_same(explainer.explain_batch(requests, batch_size=4, **options), single)


def test_items_on_the_blockwise_path_are_explained_one_at_a_time(explainer, requests):
    options = {**OPTIONS, "attention": "blockwise"}
    single = explainer.explain_batch(requests[:3], batch_size=1, **options)
    assert_same(explainer.explain_batch(requests[:3], batch_size=4, **options), single)
