"""What is explained: a target is a sum of logits of tokens that the model produced."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from vocabulary.names import ANSWER, TOKEN, WORD

if TYPE_CHECKING:
    from explainer.explanation import AnswerToken


@dataclass(frozen=True)
class Target:
    """y = Σ_p logits[p-1, token at p] over `positions` (p-1 produced p; never the argmax, never p).

    `kind` is "token" (one answer token), "word" (the tokens of one answer word) or "answer" (every
    answer token); `label` is the text shown for it.
    """

    positions: tuple[int, ...]
    kind: str = TOKEN
    label: str = ""

    @property
    def logit_positions(self) -> tuple[int, ...]:
        return tuple(p - 1 for p in self.positions)


def logit_rows(targets: Sequence[Target]) -> torch.Tensor:
    """The rows p-1 whose logits the targets read, sorted and unique: [R] long."""
    return torch.tensor(
        sorted({row for target in targets for row in target.logit_positions}), dtype=torch.long
    )


def logits_index(target: Target, rows: torch.Tensor | None) -> list[int]:
    """Where the target's rows p-1 sit in logits computed for positions `rows` (None: all positions)."""
    if rows is None:
        return list(target.logit_positions)
    row_of = {int(row): index for index, row in enumerate(rows)}
    return [row_of[row] for row in target.logit_positions]


def target_scores(
    logits: torch.Tensor, input_ids: torch.Tensor, targets: Sequence[Target], rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Scores y of every target for every sequence of a batch.

    Args:
        logits: [B, R, vocab] for B variants of the same sequence: the logits of positions `rows`
            ([R]), or of every position when `rows` is None (R = L).
        input_ids: [L], the tokens whose logits are read.
    Returns:
        [B, T] float32.
    """
    ids = input_ids.to(logits.device)
    columns = []
    for target in targets:
        index = torch.tensor(logits_index(target, rows), device=logits.device)
        token_ids = ids[torch.tensor(target.positions, device=logits.device)]
        columns.append(logits[:, index, token_ids].float().sum(dim=-1))
    return torch.stack(columns, dim=-1)


def distinct_targets(targets: Sequence[Target]) -> tuple[list[Target], list[int]]:
    """Targets with distinct positions (computed once), and where each of `targets` finds its row."""
    distinct: dict[tuple[int, ...], int] = {}
    for target in targets:
        distinct.setdefault(target.positions, len(distinct))
    return [Target(positions) for positions in distinct], [distinct[target.positions] for target in targets]


def start_rows(targets: Sequence[Target], seq_len: int) -> torch.Tensor:
    """One-hot rows e_{p-1}, summed over each target's positions: [T, L] float32."""
    rows = torch.zeros(len(targets), seq_len)
    for index, target in enumerate(targets):
        rows[index, list(target.logit_positions)] += 1.0
    return rows


def answer_targets(tokens: Sequence[AnswerToken], policy: str | Sequence[str]) -> list[Target]:
    """Targets of an answer for a policy: "all" (every token, every word, the whole answer), "answer"
    (the whole answer only) or a list of words (those answer words, plus the whole answer)."""
    if not tokens:
        return []
    targets = []
    if policy == "all":
        targets += [Target((token.position,), TOKEN, token.text) for token in tokens]
        wanted = None
    elif policy == ANSWER:
        wanted = set()
    elif isinstance(policy, (list, tuple, set)):
        wanted = {word.lower() for word in policy}
    else:
        raise ValueError(f"targets must be 'all', 'answer' or a list of words; got {policy!r}")
    seen: dict[str, list[int]] = {}
    for token in tokens:
        if token.word is not None and (wanted is None or token.word.lower() in wanted):
            seen.setdefault(token.word.lower(), []).append(token.position)
    targets += [Target(tuple(positions), WORD, word) for word, positions in seen.items()]
    targets.append(Target(tuple(token.position for token in tokens), ANSWER, ANSWER))
    return targets
