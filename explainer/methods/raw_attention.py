"""Raw attention: the last language layer's head-mean attention, row p-1."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from explainer.blockwise import Span
from explainer.methods.base import ExplainContext, RelevanceMethod
from explainer.targets import Target, start_rows


def raw_attention_from(rows: torch.Tensor, blocks: Iterable[tuple[Span, torch.Tensor]]) -> torch.Tensor:
    """rows · mean over heads of A for the last layer's attention probabilities A, given as `blocks`
    (each [B, H, n, K] over its span's query rows and key columns; `LayerAttention.blocks`): [T, L],
    on `rows`' device, which must be the blocks' device."""
    product = torch.zeros_like(rows)
    for span, probabilities in blocks:
        mean = probabilities[0].float().mean(dim=0)  # [n, K]
        product[:, span.first_key : span.stop_key] += rows[:, span.start : span.stop] @ mean
    return product


class RawAttention(RelevanceMethod):
    def relevance(self, context: ExplainContext, targets: Sequence[Target]) -> torch.Tensor:
        rows = start_rows(targets, context.layout.seq_len)
        with torch.no_grad(), context.attention_layers() as layers:
            last = layers[-1]
            return raw_attention_from(rows.to(last.device), last.blocks()).cpu()


RELEVANCE_METHOD = RawAttention
