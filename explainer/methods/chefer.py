"""Chefer et al. (arXiv 2103.15679): gradient-weighted attention relevance for a decoder-only VLM.

For the target y and every language layer l with attention A_l [heads, L, L]:

    Ā_l = mean over heads of (∂y/∂A_l ⊙ A_l)⁺
    R = I;  for l = 1..n:  R ← R + Ā_l · R
    relevance of token p = row p-1 of R

Only row p-1 is needed, so a row vector is propagated from the last layer down,
v ← e_{p-1};  for l = n..1:  v ← v + v · Ā_l   (O(L²) per layer instead of O(L³)),
and all targets share one forward: their vector-Jacobian products (activation gradients only,
parameters frozen) are batched, in chunks bounded by the context's memory budget.

On the blockwise path (`explainer.blockwise`, for long sequences) no map is kept: each target's
backward forms Ā block by block and applies it to the row as it passes each layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from explainer.blockwise import RelevanceTap, chefer_rows, tapping
from explainer.methods.base import ExplainContext, RelevanceMethod
from explainer.targets import Target, logit_rows, start_rows, target_scores


def gradient_weighted_attention(gradients: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Ā = mean over heads of (gradient ⊙ attention)⁺, in float32.

    Args:
        gradients: [T, 1, heads, L, L], one gradient per target; overwritten when already float32.
        attention: [1, heads, L, L].
    Returns:
        [T, L, L].
    """
    return gradients.float().mul_(attention.float()).clamp_(min=0).mean(dim=(1, 2))


def propagate_rows(start: torch.Tensor, cams: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rows of R = (I + Ā_n)···(I + Ā_1) picked by `start` [T, L]; `cams[l]` is Ā_{l+1} [T, L, L].

    Each Ā may live on its own device (a model split with device_map); the result is on CPU.
    """
    rows = start
    for cam in reversed(cams):
        rows = rows.to(cam.device)
        rows = rows + torch.bmm(rows.unsqueeze(1), cam).squeeze(1)
    return rows.float().cpu()


def targets_per_chunk(context: ExplainContext, n_layers: int, heads: int) -> int:
    """How many targets' attention gradients fit in the memory budget at once (at least one)."""
    seq_len = context.layout.seq_len
    bytes_per_target = 3 * n_layers * heads * seq_len * seq_len * 4  # gradients, product, Ā
    return max(1, context.max_chunk_bytes // bytes_per_target)


class Chefer(RelevanceMethod):
    def relevance(self, context: ExplainContext, targets: Sequence[Target]) -> torch.Tensor:
        if context.blockwise:
            return self._blockwise(context, targets)
        embeddings = context.embeddings().detach().requires_grad_(True)  # the graph's only leaf
        with torch.enable_grad(), context.recording() as maps:
            rows_read = logit_rows(targets)
            logits = context.logits(embeddings, rows_read)  # [1, R, vocab]
            scores = target_scores(logits, context.input_ids, targets, rows_read)[0]  # [T]
            start = start_rows(targets, context.layout.seq_len)
            chunk = targets_per_chunk(context, len(maps), maps[0].shape[1])
            rows = []
            for first in range(0, len(targets), chunk):
                chunk_scores = scores[first : first + chunk]
                basis = torch.eye(chunk_scores.numel(), device=chunk_scores.device)
                gradients = torch.autograd.grad(
                    chunk_scores, maps, grad_outputs=basis, is_grads_batched=True, retain_graph=True
                )
                cams = [
                    gradient_weighted_attention(g, a.detach()) for g, a in zip(gradients, maps, strict=True)
                ]
                del gradients
                rows.append(propagate_rows(start[first : first + chunk], cams))
        return torch.cat(rows)

    @staticmethod
    def _blockwise(context: ExplainContext, targets: Sequence[Target]) -> torch.Tensor:
        """The same rows without any L×L map: one backward per target (`explainer.blockwise`)."""
        embeddings = context.embeddings().detach().requires_grad_(True)
        tap = RelevanceTap(context.block_rows())
        with torch.enable_grad(), tapping(tap):
            rows_read = logit_rows(targets)
            logits = context.logits(embeddings, rows_read)
            scores = target_scores(logits, context.input_ids, targets, rows_read)[0]  # [T]
            return chefer_rows(tap, scores, embeddings, start_rows(targets, context.layout.seq_len))


RELEVANCE_METHOD = Chefer
