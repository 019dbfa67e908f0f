"""The interface every relevance method implements, and the context it runs in."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from explainer._capture import AttentionRecorder
from explainer._forward import embed_inputs, forward_embeddings
from explainer._sequence import SequenceLayout
from explainer.targets import Target


@dataclass
class ExplainContext:
    """One sequence prepared for explanation: model in relevance mode, inputs on the model's device."""

    model: nn.Module
    inputs: Mapping[str, torch.Tensor]
    layout: SequenceLayout
    recorder: AttentionRecorder
    max_chunk_bytes: int

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"][0]  # [L]

    def embeddings(self) -> torch.Tensor:
        """[1, L, hidden] input embeddings, image features merged in."""
        return embed_inputs(self.model, self.inputs)

    def logits(self, inputs_embeds: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """[B, R, vocab] logits of positions `rows` (None: all) of a cache-free forward from
        `inputs_embeds` [B, L, hidden]."""
        return forward_embeddings(self.model, inputs_embeds, self.inputs, rows)

    def attention_forward(self) -> None:
        """A forward for its attention maps only: no logits are computed."""
        self.logits(self.embeddings(), rows=torch.empty(0, dtype=torch.long))

    @contextmanager
    def recording(self) -> Iterator[list[torch.Tensor]]:
        """Record the attention maps of the forwards run inside; the list holds one map per layer."""
        self.recorder.maps = []
        self.recorder.active = True
        try:
            yield self.recorder.maps
        finally:
            self.recorder.active = False


class RelevanceMethod(ABC):
    """Maps targets of one sequence to relevance rows over its positions."""

    name: str

    @abstractmethod
    def relevance(self, context: ExplainContext, targets: Sequence[Target]) -> torch.Tensor:
        """Relevance of every position for every target: [T, L] float32 on CPU."""
