"""Where the images sit in a Gemma3-style sequence: image token runs, token types, grids; batches of sequences."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SequenceLayout:
    """The image blocks of one sequence.

    `image_token_runs[k]` holds the positions of image k's soft tokens (one contiguous run per image);
    `grid` is (rows, cols) of every image's token grid, soft token j sitting at row j // cols, col j % cols.
    """

    seq_len: int
    image_token_runs: tuple[torch.Tensor, ...]
    grid: tuple[int, int]

    @property
    def image_positions(self) -> torch.Tensor:
        """All image token positions, in sequence order."""  # [n_images * rows * cols]
        if not self.image_token_runs:
            return torch.empty(0, dtype=torch.long)
        return torch.cat(self.image_token_runs)

    @property
    def text_positions(self) -> torch.Tensor:
        """Positions that are not image tokens."""  # [seq_len - n_image_tokens]
        is_image = torch.zeros(self.seq_len, dtype=torch.bool)
        is_image[self.image_positions] = True
        return torch.nonzero(~is_image).flatten()


class SequenceError(ValueError):
    """The inputs do not have the shape the relevance contract needs."""


def grid_shape(config) -> tuple[int, int]:
    """Token grid of one image from `mm_tokens_per_image` (a perfect square for Gemma3)."""
    tokens = int(config.mm_tokens_per_image)
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise SequenceError(f"mm_tokens_per_image must be a perfect square, got {tokens}")
    return side, side


def image_token_runs(input_ids: torch.Tensor, image_token_id: int) -> tuple[torch.Tensor, ...]:
    """Split the positions of `image_token_id` in a 1-D sequence into maximal contiguous runs."""
    positions = torch.nonzero(input_ids == image_token_id).flatten().cpu()
    if positions.numel() == 0:
        return ()
    breaks = torch.nonzero(positions[1:] != positions[:-1] + 1).flatten() + 1
    return tuple(torch.tensor_split(positions, breaks))


def sequence_layout(input_ids: torch.Tensor, config) -> SequenceLayout:
    """Layout of a batch-1 `input_ids` [1, L], checking every image run fills one grid."""
    ids = input_ids[0]
    grid = grid_shape(config)
    runs = image_token_runs(ids, config.image_token_id)
    expected = grid[0] * grid[1]
    for index, run in enumerate(runs):
        if run.numel() != expected:
            raise SequenceError(
                f"image {index} has {run.numel()} image tokens, expected {expected} "
                f"(mm_tokens_per_image); was pan-and-scan on or the sequence truncated?"
            )
    return SequenceLayout(seq_len=ids.numel(), image_token_runs=runs, grid=grid)


def check_batch_one(inputs: Mapping[str, torch.Tensor]) -> None:
    """Raise unless `inputs` is a batch-1 mapping with `input_ids`."""
    if "input_ids" not in inputs:
        raise SequenceError(f"inputs need 'input_ids'; got keys {sorted(inputs)}")
    shape = tuple(inputs["input_ids"].shape)
    if len(shape) != 2 or shape[0] != 1:
        raise SequenceError(f"inputs must be one sequence of shape [1, seq_len]; input_ids has shape {shape}")


def token_type_ids_for(inputs: Mapping[str, torch.Tensor], config) -> torch.Tensor:
    """`token_type_ids` as generation saw them: given ones, else 1 exactly on image soft tokens.

    Without them Gemma3 builds a purely causal mask and the image block loses its bidirectional
    attention: a different computation from the one that produced the answer.
    """
    given = inputs.get("token_type_ids")
    if given is not None:
        return given
    return (inputs["input_ids"] == config.image_token_id).long()


def check_target_positions(target_positions: list[int], seq_len: int) -> list[int]:
    """Positions p with 1 <= p < seq_len (the logit at p-1 produced the token at p)."""
    positions = [int(p) for p in target_positions]
    bad = [p for p in positions if not 1 <= p < seq_len]
    if bad:
        raise SequenceError(
            f"target positions must lie in [1, {seq_len - 1}] (row p-1 explains token p); got {bad}"
        )
    return positions


PADDED_KEYS = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0}  # None: the pad token id


def pad_sequences(
    inputs: Sequence[Mapping[str, torch.Tensor]], pad_token_id: int, side: str
) -> dict[str, torch.Tensor]:
    """Batch-1 sequences as one batch [B, max L], padded on `side` ("left" for generation, "right" for
    the relevance forward: every real position keeps its index and attends no pad), images
    concatenated in order (`pixel_values` [Σ images, ...]). Every sequence must carry the same keys."""
    for sequence in inputs:
        check_batch_one(sequence)
    if len({frozenset(sequence) for sequence in inputs}) != 1:
        raise SequenceError("sequences of a batch must carry the same inputs (all with images or none)")
    length = max(sequence["input_ids"].shape[1] for sequence in inputs)
    batch = {}
    for key, fill in PADDED_KEYS.items():
        if key not in inputs[0]:
            continue
        rows = []
        for sequence in inputs:
            row = sequence[key]
            pad = row.new_full((1, length - row.shape[1]), pad_token_id if fill is None else fill)
            rows.append(torch.cat([pad, row] if side == "left" else [row, pad], dim=1))
        batch[key] = torch.cat(rows)
    if "pixel_values" in inputs[0]:
        batch["pixel_values"] = torch.cat([sequence["pixel_values"] for sequence in inputs])
    return batch
