"""Attention rollout (Abnar & Zuidema 2020), the gradient-free baseline.

Per layer Â_l = 0.5 · mean over heads of A_l + 0.5 · I, rows renormalised to sum to 1;
rollout = Â_n···Â_1 and the relevance of token p is its row p-1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from explainer.blockwise import RelevanceTap, rollout_rows, tapping
from explainer.methods.base import ExplainContext, RelevanceMethod
from explainer.targets import Target, start_rows


class Rollout(RelevanceMethod):
    def relevance(self, context: ExplainContext, targets: Sequence[Target]) -> torch.Tensor:
        rows = start_rows(targets, context.layout.seq_len)
        if context.blockwise:
            with torch.no_grad(), tapping(RelevanceTap(context.block_rows(), record=True)) as tap:
                context.attention_forward()
                return rollout_rows(tap, rows)
        with torch.no_grad(), context.recording() as maps:
            context.attention_forward()
            for attention in reversed(maps):
                mixed = 0.5 * attention[0].float().mean(dim=0)  # [L, L]
                mixed.diagonal().add_(0.5)
                mixed = mixed / mixed.sum(dim=-1, keepdim=True)
                rows = rows.to(mixed.device) @ mixed
        return rows.float().cpu()
