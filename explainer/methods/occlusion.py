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
from explainer.targets import Target, logit_rows, target_scores


class Occlusion(RelevanceMethod):
    def relevance(self, context: ExplainContext, targets: Sequence[Target]) -> torch.Tensor:
        relevance = torch.zeros(len(targets), context.layout.seq_len)
        rows = logit_rows(targets)

        def scores(logits: torch.Tensor) -> torch.Tensor:
            return target_scores(logits, context.input_ids, targets, rows)  # [B, T]

        with torch.no_grad():
            embeddings = context.embeddings()  # [1, L, D]
            reference = scores(context.logits(embeddings, rows))  # [1, T]
            positions = context.layout.image_positions
            occluded = context.occluded_token_scores(embeddings, positions.split(1), scores, rows)  # [N, T]
            relevance[:, positions] = (reference - occluded).T.float().cpu()
        return relevance
