"""Checks of an explanation against the model itself: every method against the occlusion reference,
removal curves and model randomisation.

Prompts of several images are also checked image by image against image occlusion (one forward per
image: which images the answer needs); prompts with more image tokens than `max_cell_tokens` (a CT
study of 85 slices has 21,760) are checked image by image only, since token and pixel occlusion take
one forward per image token.

For a sample of audited items the pipeline asks, per target and image: how well does each method's
map rank the image cells like the occlusion reference (Spearman, peak cell)? How fast does the
target's log-probability fall when cells are removed in the map's order? And does the map survive
re-initialising the top language layers (it should not)?

Removal curves (deletion and insertion in the sense of Petsiuk et al., with tokens instead of
pixels): image tokens are replaced by the occlusion baseline (their image's mean image-token
embedding) in order of a map's relevance, most relevant first (MoRF: a faithful map makes the
explained token's log-probability fall fast) or least relevant first (LeRF: it should stay high).

Model randomisation (Adebayo et al. 2018): re-initialise the top language layers and explain
again; a map that barely changes does not depend on what the model learned.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import trapezoid  # numpy's own is np.trapz before 2.0, np.trapezoid after
from torch import nn

from explainer._capture import language_layers
from explainer.engine import Explainer
from explainer.explanation import Explanation
from explainer.generation import build_prompt, full_sequence
from explainer.methods import IMAGE_REFERENCE, METHODS, REFERENCE_METHODS
from explainer.targets import Target, logit_rows, logits_index
from vocabulary.map_stats import spearman, top_cell_agreement


@dataclass(frozen=True)
class RemovalCurves:
    """Log-probability of the target after removing a fraction of image tokens, in two orders."""

    fractions: np.ndarray  # [steps + 1], 0 .. 1
    most_relevant_first: np.ndarray  # [steps + 1]
    least_relevant_first: np.ndarray  # [steps + 1]

    @property
    def morf_auc(self) -> float:
        """Mean log-probability along the MoRF curve (lower = more faithful)."""
        return float(trapezoid(self.most_relevant_first, self.fractions))

    @property
    def lerf_auc(self) -> float:
        """Mean log-probability along the LeRF curve (higher = more faithful)."""
        return float(trapezoid(self.least_relevant_first, self.fractions))

    @property
    def auc_gap(self) -> float:
        """LeRF − MoRF area: how much better the map's order is than its reverse (higher = better)."""
        return self.lerf_auc - self.morf_auc


def target_log_probability(
    logits: torch.Tensor, input_ids: torch.Tensor, target: Target, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Σ_p log softmax(logits[:, p-1])[token at p] for a batch of variants: [B].

    `logits` [B, R, vocab] hold positions `rows` (None: every position).
    """
    index = torch.tensor(logits_index(target, rows), device=logits.device)
    log_probs = torch.log_softmax(logits[:, index].float(), dim=-1)  # [B, P, vocab]
    tokens = input_ids.to(logits.device)[torch.tensor(target.positions, device=logits.device)]
    return log_probs[:, torch.arange(len(index)), tokens].sum(dim=-1)


def removal_curves(
    explainer: Explainer,
    inputs: Mapping[str, torch.Tensor],
    target: Target,
    relevance_row: torch.Tensor,
    *,
    steps: int = 8,
) -> RemovalCurves:
    """MoRF and LeRF curves of one target for a relevance row [L] of any method.

    Image tokens of all images are ranked together by the row's values; each step removes the next
    `1/steps` of them. The 2·(steps+1) variants are scored in forwards batched within the
    explainer's memory budget.
    """
    fractions = np.linspace(0.0, 1.0, steps + 1)
    rows = logit_rows([target])
    with torch.no_grad(), explainer.context(inputs) as context:
        positions = context.layout.image_positions
        order = positions[torch.argsort(relevance_row[positions], descending=True, stable=True)]
        removed = [
            ranking[: round(fraction * positions.numel())]
            for ranking in (order, order.flip(0))
            for fraction in fractions
        ]

        def log_probability(logits: torch.Tensor) -> torch.Tensor:
            return target_log_probability(logits, context.input_ids, target, rows)

        scores = context.occluded_token_scores(context.embeddings(), removed, log_probability, rows).cpu()
    count = steps + 1
    return RemovalCurves(fractions, scores[:count].numpy(), scores[count:].numpy())


@contextmanager
def randomized_top_layers(model: nn.Module, n_layers: int, *, seed: int = 0) -> Iterator[nn.Module]:
    """The model with its top `n_layers` language layers re-initialised; the weights come back on exit.

    Matrices are drawn from N(0, initializer_range²), vectors (norms, biases) are zeroed, as Gemma
    initialises them. Only those layers' weights are copied aside, not the whole model.
    """
    layers = list(language_layers(model))[-n_layers:]
    saved = [{name: p.detach().clone() for name, p in layer.named_parameters()} for layer in layers]
    std = getattr(model.config.get_text_config(), "initializer_range", 0.02)
    generator = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for layer in layers:
                for parameter in layer.parameters():
                    if parameter.dim() >= 2:
                        noise = torch.randn(parameter.shape, generator=generator) * std
                        parameter.copy_(noise.to(parameter.device, parameter.dtype))
                    else:
                        parameter.zero_()
        yield model
    finally:
        with torch.no_grad():
            for layer, state in zip(layers, saved, strict=True):
                for name, parameter in layer.named_parameters():
                    parameter.copy_(state[name])


@dataclass(frozen=True)
class MethodCheck:
    """One method's maps of one target, and how they hold up against the reference checks."""

    target: Target
    method: str
    image_maps: list[np.ndarray]  # per image [rows, cols]
    spearman_vs_occlusion: list[float]  # per image; NaN where token occlusion was not computed
    top_cell_agrees: list[bool | None]  # per image; None where token occlusion was not computed
    morf_auc: float
    lerf_auc: float
    randomization_spearman: list[float] | None  # per image; None where not computed
    seconds: float  # computing this method's map, per target
    removal_seconds: float = 0.0  # both removal curves of this target
    randomization_seconds: float = 0.0  # the randomised model's map, per target

    @property
    def auc_gap(self) -> float:
        return self.lerf_auc - self.morf_auc


def explanation_inputs(explainer: Explainer, explanation: Explanation) -> dict[str, torch.Tensor]:
    """The full teacher-forced sequence (prompt + generated answer) an explanation was computed on."""
    prompt = build_prompt(
        explainer.processor,
        explanation.images,
        explanation.question,
        explanation.system_prompt,
        image_labels=explanation.image_labels or None,
    )
    answer = torch.tensor([token.id for token in explanation.tokens], dtype=torch.long)
    return full_sequence(prompt, answer)


def check_explanation(
    explainer: Explainer,
    explanation: Explanation,
    targets: Sequence[Target],
    *,
    methods: Sequence[str] = tuple(METHODS),
    randomize_layers: int = 2,
    removal_steps: int = 8,
    max_cell_tokens: int | None = None,
) -> list[MethodCheck]:
    """Every method's maps for `targets`, compared with token occlusion (rank correlation, peak cell), with
    removal AUCs, and for the methods that are not references, with model randomisation.

    Image occlusion is checked only for prompts of several images; token and pixel occlusion only when
    the prompt holds at most `max_cell_tokens` image tokens (None: always)."""
    inputs = explainer.prepare_inputs(explanation_inputs(explainer, explanation))
    layout = explainer.layout(inputs)
    rows, cols = layout.grid
    n_images = len(layout.image_token_runs)
    cell_references = max_cell_tokens is None or layout.image_positions.numel() <= max_cell_tokens
    methods = [
        method
        for method in methods
        if (method != IMAGE_REFERENCE or n_images > 1)
        and (method not in REFERENCE_METHODS or cell_references)
    ]

    def image_maps(relevance_row: torch.Tensor) -> list[np.ndarray]:
        return [relevance_row[run].reshape(rows, cols).numpy() for run in layout.image_token_runs]

    started = time.perf_counter()
    occlusion = explainer.relevance(inputs, list(targets), "occlusion") if cell_references else None
    occlusion_seconds = time.perf_counter() - started
    randomized: dict[str, torch.Tensor] = {}
    randomized_seconds: dict[str, float] = {}
    attention_methods = [m for m in methods if m not in REFERENCE_METHODS and m != IMAGE_REFERENCE]
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
            references = image_maps(occlusion[index]) if occlusion is not None else [None] * n_images
            removal_started = time.perf_counter()
            curves = removal_curves(explainer, inputs, target, relevance[index], steps=removal_steps)
            removal_seconds = time.perf_counter() - removal_started
            checks.append(
                MethodCheck(
                    target=target,
                    method=method,
                    image_maps=maps,
                    spearman_vs_occlusion=[
                        spearman(m, r) if r is not None else float("nan")
                        for m, r in zip(maps, references, strict=True)
                    ],
                    top_cell_agrees=[
                        top_cell_agreement(m, r) if r is not None else None
                        for m, r in zip(maps, references, strict=True)
                    ],
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
