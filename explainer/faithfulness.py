"""Checks of an explanation against the model itself: removal curves and model randomisation.

Removal curves (deletion and insertion in the sense of Petsiuk et al., with tokens instead of
pixels): image tokens are replaced by their image's mean image-token embedding (the occlusion
baseline) in order of a map's relevance, most relevant first (MoRF: a faithful map makes the
explained token's log-probability fall fast) or least relevant first (LeRF: it should stay high).

Model randomisation (Adebayo et al. 2018): re-initialise the top language layers and explain
again; a map that barely changes does not depend on what the model learned.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explainer._capture import language_layers, relevance_mode
from explainer._forward import embed_inputs, forward_embeddings
from explainer._sequence import sequence_layout
from explainer.targets import Target, logit_rows, logits_index


@dataclass(frozen=True)
class RemovalCurves:
    """Log-probability of the target after removing a fraction of image tokens, in two orders."""

    fractions: np.ndarray  # [steps + 1], 0 .. 1
    most_relevant_first: np.ndarray  # [steps + 1]
    least_relevant_first: np.ndarray  # [steps + 1]

    @property
    def morf_auc(self) -> float:
        """Mean log-probability along the MoRF curve (lower = more faithful)."""
        return float(np.trapezoid(self.most_relevant_first, self.fractions))

    @property
    def lerf_auc(self) -> float:
        """Mean log-probability along the LeRF curve (higher = more faithful)."""
        return float(np.trapezoid(self.least_relevant_first, self.fractions))

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
    explainer,
    inputs: Mapping[str, torch.Tensor],
    target: Target,
    relevance_row: torch.Tensor,
    *,
    steps: int = 8,
) -> RemovalCurves:
    """MoRF and LeRF curves of one target for a relevance row [L] of any method.

    Image tokens of all images are ranked together by the row's values; each step removes the next
    `1/steps` of them. Both curves share one batched forward of 2·(steps+1) variants.
    """
    prepared = explainer.prepare_inputs(inputs)
    layout = sequence_layout(prepared["input_ids"], explainer.model.config)
    positions = layout.image_positions
    order = positions[torch.argsort(relevance_row[positions], descending=True, stable=True)]
    fractions = np.linspace(0.0, 1.0, steps + 1)
    rows = logit_rows([target])
    with torch.no_grad(), relevance_mode(explainer.model):
        embeddings = embed_inputs(explainer.model, prepared)
        baseline = embeddings.clone()
        for run in layout.image_token_runs:
            baseline[0, run] = embeddings[0, run].mean(dim=0)
        variants = []
        for ranking in (order, order.flip(0)):
            for fraction in fractions:
                removed = ranking[: round(fraction * positions.numel())]
                variant = embeddings.clone()
                variant[0, removed] = baseline[0, removed]
                variants.append(variant)
        batch = torch.cat(variants)
        scores = torch.cat(
            [
                target_log_probability(
                    forward_embeddings(explainer.model, chunk, prepared, rows),
                    prepared["input_ids"][0],
                    target,
                    rows,
                )
                for chunk in torch.split(batch, 8)
            ]
        ).cpu()
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
