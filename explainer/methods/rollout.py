"""Attention rollout (Abnar & Zuidema 2020), the gradient-free baseline.

Per layer Â_l = 0.5 · mean over heads of A_l + 0.5 · I, rows renormalised to sum to 1;
rollout = Â_n···Â_1 and the relevance of token p is its row p-1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from explainer.blockwise import Span
from explainer.methods.base import ExplainContext, RelevanceMethod
from explainer.targets import Target, start_rows


def rollout_step(rows: torch.Tensor, blocks: Iterable[tuple[Span, torch.Tensor]]) -> torch.Tensor:
    """rows · Â_l for the layer whose attention probabilities A_l come as `blocks` (each [B, H, n, K]
    over its span's query rows and key columns; `LayerAttention.blocks`): [T, L], on `rows`' device,
    which must be the blocks' device."""
    product = torch.zeros_like(rows)
    for span, probabilities in blocks:
        mixed = 0.5 * probabilities[0].float().mean(dim=0)  # [n, K]
        diagonal = torch.arange(span.start, span.stop, device=mixed.device)
        mixed[diagonal - span.start, diagonal - span.first_key] += 0.5
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        product[:, span.first_key : span.stop_key] += rows[:, span.start : span.stop] @ mixed
    return product


class Rollout(RelevanceMethod):
    def relevance(self, context: ExplainContext, targets: Sequence[Target]) -> torch.Tensor:
        rows = start_rows(targets, context.layout.seq_len)
        with torch.no_grad(), context.attention_layers() as layers:
            for layer in reversed(layers):
                rows = rollout_step(rows.to(layer.device), layer.blocks())
        return rows.float().cpu()


RELEVANCE_METHOD = Rollout
