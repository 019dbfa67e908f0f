"""Two phantom models side by side on the same held-out cases: answers, answer logits, whole-answer maps.

The decoy control's report (`phantom.training.decoy`) is made of these: a model that should compute what
its reference computes (identical greedy answers, answer logits equal to float rounding, the same token
occlusion) while one relevance method's peak moves to a chosen cell and the others' stay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from explainer import Explainer
from explainer.generation import build_prompt, full_sequence, generate_answer
from explainer.targets import Target
from phantom.cases import PhantomCase
from phantom.training.data import GRID, EncodedCases, encode
from phantom.training.evaluate import MODEL_INPUTS
from vocabulary.map_stats import peak_cell, pointing_hit
from vocabulary.regions import box_region

METHODS = ("chefer", "rollout", "raw_attention", "occlusion")


def answer_target(prompt_length: int, answer_ids: torch.Tensor) -> Target:
    """The whole answer (y = Σ of its tokens' logits), as `Explainer.explain(targets="answer")` builds it."""
    return Target(tuple(range(prompt_length, prompt_length + len(answer_ids))), "answer", "answer")


def case_maps(
    explainers: Sequence[Explainer], case: PhantomCase, methods: Sequence[str] = METHODS
) -> tuple[list[str], list[dict[str, np.ndarray]]]:
    """Greedy answers of each explainer's model, and each one's whole-answer map per method ([GRID, GRID]).

    Every model explains the same sequence: the prompt and the first model's answer.
    """
    processor = explainers[0].processor
    prompt = build_prompt(processor, [case.image], case.question)
    answers = [generate_answer(e.model, prompt, max_new_tokens=8) for e in explainers]
    inputs = full_sequence(prompt, answers[0])
    target = answer_target(prompt.length, answers[0])
    image = explainers[0].layout(inputs).image_token_runs[0]
    maps = [
        {
            method: e.relevance(inputs, [target], method)[0, image].reshape(GRID, GRID).numpy()
            for method in methods
        }
        for e in explainers
    ]
    texts = [processor.tokenizer.decode(answer, skip_special_tokens=True).strip() for answer in answers]
    return texts, maps


@torch.no_grad()
def max_answer_logit_change(reference: nn.Module, model: nn.Module, encoded: EncodedCases) -> float:
    """max |Δlogit| over every vocabulary entry of the rows that predict the answer and its <end_of_turn>."""
    largest = 0.0
    for start in range(0, len(encoded), 64):
        batch = encoded.batch(slice(start, start + 64))
        inputs = {key: batch[key] for key in MODEL_INPUTS}
        rows = batch["labels"].roll(-1, dims=1) != -100  # [B, L], row p-1 of every label p
        change = (reference(**inputs).logits - model(**inputs).logits)[rows]
        largest = max(largest, float(change.abs().max()))
    return largest


def compare(explainers: Mapping[str, Explainer], cases: Sequence[PhantomCase], cell: int) -> dict:
    """Two models (reference first) on `cases`: answers, answer logits, occlusion, and where each method's
    whole-answer peak lands: on grid cell `cell` (row-major), on the asked object (among cases with one),
    on the reference's peak cell."""
    (reference_name, reference), (name, model) = explainers.items()
    names = (reference_name, name)
    on_cell = {n: dict.fromkeys(METHODS, 0) for n in names}
    on_object = {n: dict.fromkeys(METHODS, 0) for n in names}
    same_peak = dict.fromkeys(METHODS, 0)
    same_answers, right, with_object, occlusion_diff = 0, 0, 0, 0.0
    for case in cases:
        (reference_answer, answer), maps = case_maps((reference, model), case)
        same_answers += answer == reference_answer
        right += reference_answer == case.answer
        occlusion_diff = max(occlusion_diff, float(np.abs(maps[0]["occlusion"] - maps[1]["occlusion"]).max()))
        weights = box_region(case.lesion_box, case.image.size, (GRID, GRID)) if case.lesion_box else None
        with_object += weights is not None
        for method in METHODS:
            same_peak[method] += peak_cell(maps[0][method]) == peak_cell(maps[1][method])
        for model_name, model_maps in zip(names, maps, strict=True):
            for method, cell_map in model_maps.items():
                on_cell[model_name][method] += peak_cell(cell_map) == divmod(cell, GRID)
                if weights is not None:
                    on_object[model_name][method] += pointing_hit(cell_map, weights)
    n = len(cases)
    encoded = encode(list(cases), reference.processor)
    return {
        "cases": n,
        "cases_with_object": with_object,
        "answers_identical": same_answers,
        "answers_right": right,
        "max_abs_logit_change": max_answer_logit_change(reference.model, model.model, encoded),
        "occlusion_max_abs_diff": occlusion_diff,
        "cell": cell,
        "peak_on_cell": {m: {k: round(v / n, 4) for k, v in rates.items()} for m, rates in on_cell.items()},
        "peak_same_as_reference": {k: round(v / n, 4) for k, v in same_peak.items()},
        "peak_on_object": {
            m: {k: round(v / max(1, with_object), 4) for k, v in rates.items()}
            for m, rates in on_object.items()
        },
    }
