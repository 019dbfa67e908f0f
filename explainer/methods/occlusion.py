"""Token occlusion, the perturbation reference that attention maps are checked against.

For every image token i: relevance[i] = y(x) - y(x with token i's embedding replaced by the
baseline), the baseline being the mean image-token embedding of that token's image. Batched
forwards within the memory budget, no gradients; every target is read from the same forwards.
Non-image positions are 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from explainer.methods.base import ExplainContext, RelevanceMethod
from explainer.targets import Target


class Occlusion(RelevanceMethod):
    def relevance(self, context: ExplainContext, targets: Sequence[Target]) -> torch.Tensor:
        relevance = torch.zeros(len(targets), context.layout.seq_len)
        positions = context.layout.image_positions
        relevance[:, positions] = context.occlusion_drops(targets, positions.split(1)).T  # [T, N]
        return relevance


RELEVANCE_METHOD = Occlusion
