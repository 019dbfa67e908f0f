"""A per-cell auxiliary objective on the image tokens at the language model's input.

A linear probe (discarded after training) reads each image token's embedding, [B, 64, hidden], and
predicts 0 = "no asked object in this cell" or 1 + zone = "the asked object is here, in this zone"
(zones: right/left × upper/middle/lower). It teaches the vision tower to put the object's evidence,
gated by content and tagged with position, into the object's own tokens — which is what lets the
negative control carry that evidence through uniform attention (a slow thing to learn unaided).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

N_ZONES = 6


@contextmanager
def capture_image_embeddings(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the projector's output ([B, tokens, hidden] per forward); the hook is removed on exit."""
    captured: list[torch.Tensor] = []
    handle = model.model.multi_modal_projector.register_forward_hook(
        lambda _m, _args, output: captured.append(output)
    )
    try:
        yield captured
    finally:
        handle.remove()


def cell_labels(object_cells: torch.Tensor, object_zone: torch.Tensor) -> torch.Tensor:
    """[B, G] class per cell: 0 outside the asked object, 1 + its zone inside; object_zone [B] (-1: none)."""
    labels = torch.zeros(object_cells.shape, dtype=torch.long)
    present = object_zone >= 0
    labels[present] = torch.where(object_cells[present], object_zone[present, None] + 1, 0)
    return labels


def probe_loss(
    probe: nn.Linear, embeddings: torch.Tensor, object_cells: torch.Tensor, object_zone: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of the probe over every image cell; embeddings [B, G, hidden]."""
    logits = probe(embeddings)  # [B, G, 1 + N_ZONES]
    return nn.functional.cross_entropy(logits.flatten(0, 1), cell_labels(object_cells, object_zone).flatten())
