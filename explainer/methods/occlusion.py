"""Token occlusion, the perturbation reference that attention maps are checked against.

For every image token i: relevance[i] = y(x) - y(x with token i's embedding replaced by the
baseline), the baseline being the mean image-token embedding of that token's image. Batched
forwards, no gradients; every target is read from the same forwards. Non-image positions are 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from explainer.methods.base import ExplainContext, RelevanceMethod
from explainer.targets import Target, logit_rows, target_scores


def occluded_batch(
    embeddings: torch.Tensor, positions: torch.Tensor, baselines: torch.Tensor
) -> torch.Tensor:
    """Copies of `embeddings` [1, L, D], copy b with position `positions[b]` set to `baselines[b]` [B, D]."""
    batch = embeddings.repeat(positions.numel(), 1, 1)
    batch[torch.arange(positions.numel()), positions] = baselines
    return batch


class Occlusion(RelevanceMethod):
    name = "occlusion"

    def relevance(self, context: ExplainContext, targets: Sequence[Target]) -> torch.Tensor:
        relevance = torch.zeros(len(targets), context.layout.seq_len)
        with torch.no_grad():
            embeddings = context.embeddings()  # [1, L, D]
            rows = logit_rows(targets)
            reference = target_scores(
                context.logits(embeddings, rows), context.input_ids, targets, rows
            )  # [1, T]
            batch_size = self.batch_size(context, embeddings)
            for run in context.layout.image_token_runs:
                baseline = embeddings[0, run.to(embeddings.device)].mean(dim=0)  # [D]
                for chunk in torch.split(run, batch_size):
                    variants = occluded_batch(embeddings, chunk, baseline.expand(chunk.numel(), -1))
                    logits = context.logits(variants, rows)
                    scores = target_scores(logits, context.input_ids, targets, rows)  # [B, T]
                    relevance[:, chunk] = (reference - scores).T.float().cpu()
        return relevance

    @staticmethod
    def batch_size(context: ExplainContext, embeddings: torch.Tensor) -> int:
        """Occluded copies per forward within the memory budget (activations ≈ 16 × L × hidden each)."""
        seq_len, hidden = embeddings.shape[1:]
        per_copy = 16 * seq_len * hidden * embeddings.element_size()
        return max(1, min(64, context.max_chunk_bytes // per_copy))
