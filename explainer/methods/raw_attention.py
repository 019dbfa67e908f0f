"""Raw attention: the last language layer's head-mean attention, row p-1."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from explainer.blockwise import RelevanceTap, raw_attention_rows, tapping
from explainer.methods.base import ExplainContext, RelevanceMethod
from explainer.targets import Target, start_rows


class RawAttention(RelevanceMethod):
    def relevance(self, context: ExplainContext, targets: Sequence[Target]) -> torch.Tensor:
        rows = start_rows(targets, context.layout.seq_len)
        if context.blockwise:
            with torch.no_grad(), tapping(RelevanceTap(context.block_rows(), record=True)) as tap:
                context.attention_forward()
                return raw_attention_rows(tap, rows)
        with torch.no_grad(), context.recording() as maps:
            context.attention_forward()
            last = maps[-1][0].float().mean(dim=0)  # [L, L]
            return (rows.to(last.device) @ last).cpu()
