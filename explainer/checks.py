"""Faithfulness checks of one explanation: every method against occlusion, removal curves, randomisation.

For a sample of audited items the pipeline asks, per target and image: how well does each method's
map rank the image cells like the occlusion reference (Spearman, peak cell)? How fast does the
target's log-probability fall when cells are removed in the map's order (MoRF) versus the reverse
(LeRF)? And does the map survive re-initialising the top language layers (it should not)?
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from explainer._sequence import sequence_layout
from explainer.explanation import Explanation
from explainer.faithfulness import randomized_top_layers, removal_curves
from explainer.generation import build_prompt, full_sequence
from explainer.map_stats import spearman, top_cell_agreement
from explainer.targets import Target

CHECKED_METHODS = ("chefer", "rollout", "raw_attention", "occlusion")


@dataclass(frozen=True)
class MethodCheck:
    """One method's maps of one target, and how they hold up against the reference checks."""

    target: Target
    method: str
    image_maps: list[np.ndarray]  # per image [rows, cols]
    spearman_vs_occlusion: list[float]  # per image
    top_cell_agrees: list[bool]  # per image
    morf_auc: float
    lerf_auc: float
    randomization_spearman: list[float] | None  # per image; None where not computed
    seconds: float  # computing this method's map, per target
    removal_seconds: float = 0.0  # both removal curves of this target
    randomization_seconds: float = 0.0  # the randomised model's map, per target

    @property
    def auc_gap(self) -> float:
        return self.lerf_auc - self.morf_auc


def explanation_inputs(explainer, explanation: Explanation) -> dict[str, torch.Tensor]:
    """The full teacher-forced sequence (prompt + generated answer) an explanation was computed on."""
    prompt = build_prompt(
        explainer.processor, explanation.images, explanation.question, explanation.system_prompt
    )
    answer = torch.tensor([token.id for token in explanation.tokens], dtype=torch.long)
    return full_sequence(prompt, answer)


def check_explanation(
    explainer,
    explanation: Explanation,
    targets: Sequence[Target],
    *,
    methods: Sequence[str] = CHECKED_METHODS,
    randomize_layers: int = 2,
    removal_steps: int = 8,
) -> list[MethodCheck]:
    """Every method's maps for `targets`, compared with occlusion, with removal AUCs and randomisation."""
    inputs = explainer.prepare_inputs(explanation_inputs(explainer, explanation))
    layout = sequence_layout(inputs["input_ids"], explainer.model.config)
    rows, cols = layout.grid

    def image_maps(relevance_row: torch.Tensor) -> list[np.ndarray]:
        return [relevance_row[run].reshape(rows, cols).numpy() for run in layout.image_token_runs]

    started = time.perf_counter()
    occlusion = explainer.relevance(inputs, list(targets), "occlusion")
    occlusion_seconds = time.perf_counter() - started
    randomized: dict[str, torch.Tensor] = {}
    randomized_seconds: dict[str, float] = {}
    attention_methods = [method for method in methods if method != "occlusion"]
    if randomize_layers:
        with randomized_top_layers(explainer.model, randomize_layers):
            for method in attention_methods:
                started = time.perf_counter()
                randomized[method] = explainer.relevance(inputs, list(targets), method)
                randomized_seconds[method] = time.perf_counter() - started

    checks = []
    for method in methods:
        started = time.perf_counter()
        relevance = occlusion if method == "occlusion" else explainer.relevance(inputs, list(targets), method)
        seconds = occlusion_seconds if method == "occlusion" else time.perf_counter() - started
        for index, target in enumerate(targets):
            maps = image_maps(relevance[index])
            references = image_maps(occlusion[index])
            removal_started = time.perf_counter()
            curves = removal_curves(explainer, inputs, target, relevance[index], steps=removal_steps)
            removal_seconds = time.perf_counter() - removal_started
            checks.append(
                MethodCheck(
                    target=target,
                    method=method,
                    image_maps=maps,
                    spearman_vs_occlusion=[spearman(m, r) for m, r in zip(maps, references, strict=True)],
                    top_cell_agrees=[top_cell_agreement(m, r) for m, r in zip(maps, references, strict=True)],
                    morf_auc=curves.morf_auc,
                    lerf_auc=curves.lerf_auc,
                    randomization_spearman=(
                        [
                            spearman(m, r)
                            for m, r in zip(maps, image_maps(randomized[method][index]), strict=True)
                        ]
                        if method in randomized
                        else None
                    ),
                    seconds=seconds / max(1, len(targets)),
                    removal_seconds=removal_seconds,
                    randomization_seconds=randomized_seconds.get(method, 0.0) / max(1, len(targets)),
                )
            )
    return checks
