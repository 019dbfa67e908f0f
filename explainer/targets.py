"""What is explained: a target is a sum of logits of tokens that the model produced."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Target:
    """y = Σ_p logits[p-1, token at p] over `positions` (p-1 produced p; never the argmax, never p).

    `kind` is "token" (one answer token), "word" (the tokens of one answer word) or "answer" (every
    answer token); `label` is the text shown for it.
    """

    positions: tuple[int, ...]
    kind: str = "token"
    label: str = ""

    @property
    def logit_positions(self) -> tuple[int, ...]:
        return tuple(p - 1 for p in self.positions)


def target_scores(logits: torch.Tensor, input_ids: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """Scores y of every target for every sequence of a batch.

    Args:
        logits: [B, L, vocab] for B variants of the same sequence.
        input_ids: [L], the tokens whose logits are read.
    Returns:
        [B, T] float32.
    """
    columns = []
    for target in targets:
        positions = torch.tensor(target.positions, device=logits.device)
        token_ids = input_ids.to(logits.device)[positions]
        columns.append(logits[:, positions - 1, token_ids].float().sum(dim=-1))
    return torch.stack(columns, dim=-1)


def start_rows(targets: Sequence[Target], seq_len: int) -> torch.Tensor:
    """One-hot rows e_{p-1}, summed over each target's positions: [T, L] float32."""
    rows = torch.zeros(len(targets), seq_len)
    for index, target in enumerate(targets):
        rows[index, list(target.logit_positions)] += 1.0
    return rows
