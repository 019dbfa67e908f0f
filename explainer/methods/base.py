"""The interface every relevance method implements, and the context it runs in."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from explainer import memory
from explainer._capture import AttentionRecorder
from explainer._forward import embed_inputs, forward_embeddings
from explainer._sequence import SequenceLayout, pad_sequences
from explainer.blockwise import LayerAttention, RelevanceTap, tapping
from explainer.targets import Target, logit_rows, target_scores


@dataclass
class ExplainContext:
    """One sequence prepared for explanation: model in relevance mode, inputs on the model's device."""

    model: nn.Module
    inputs: Mapping[str, torch.Tensor]
    layout: SequenceLayout
    recorder: AttentionRecorder
    max_chunk_bytes: int
    attention: str = "eager"  # "blockwise": no maps are recorded, methods take `explainer.blockwise`

    @property
    def blockwise(self) -> bool:
        return self.attention == "blockwise"

    def block_rows(self) -> int:
        """Query rows per attention block (`explainer.memory.block_rows`)."""
        return memory.block_rows(self.model, self.layout.seq_len, self.max_chunk_bytes)

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

    def copies_per_forward(self, extra_bytes_per_copy: int = 0) -> int:
        """Perturbed copies of the sequence per forward (`explainer.memory.copies_per_forward`)."""
        return memory.copies_per_forward(
            self.model, self.layout.seq_len, self.max_chunk_bytes, extra_bytes_per_copy
        )

    def variant_scores(
        self,
        n_variants: int,
        build: Callable[[range], torch.Tensor],
        score: Callable[[torch.Tensor], torch.Tensor],
        rows: torch.Tensor | None = None,
        *,
        extra_bytes_per_copy: int = 0,
    ) -> torch.Tensor:
        """`score(logits)` of `n_variants` perturbed copies of the sequence: [n_variants, ...].

        Every perturbation goes through here: `build(indices)` returns the input embeddings
        [B, L, hidden] of those variants, as many per forward as the memory budget allows; `rows`
        selects the logit rows computed (see `logits`); `score` maps [B, R, vocab] to [B, ...].
        """
        per_forward = self.copies_per_forward(extra_bytes_per_copy)
        return torch.cat(
            [
                score(self.logits(build(range(first, min(first + per_forward, n_variants))), rows))
                for first in range(0, n_variants, per_forward)
            ]
        )

    def occlusion_baseline(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[1, L, hidden]: `embeddings` with every image token replaced by its image's mean image-token
        embedding, the value an occluded token takes."""
        baseline = embeddings.clone()
        for run in self.layout.image_token_runs:
            baseline[0, run] = embeddings[0, run].mean(dim=0)
        return baseline

    def occluded_token_scores(
        self,
        embeddings: torch.Tensor,
        occluded: Sequence[torch.Tensor],
        score: Callable[[torch.Tensor], torch.Tensor],
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`score(logits)` of copies of `embeddings` [1, L, hidden], copy v with the positions
        `occluded[v]` set to the occlusion baseline: [V, ...] (see `variant_scores`)."""
        baseline = self.occlusion_baseline(embeddings)

        def build(indices: range) -> torch.Tensor:
            batch = embeddings.repeat(len(indices), 1, 1)  # [B, L, hidden]
            for copy, index in enumerate(indices):
                batch[copy, occluded[index]] = baseline[0, occluded[index]]
            return batch

        return self.variant_scores(len(occluded), build, score, rows)

    def occlusion_drops(self, targets: Sequence[Target], occluded: Sequence[torch.Tensor]) -> torch.Tensor:
        """[V, T] float32 on the CPU: how much each target's score drops when the positions `occluded[v]`
        take the occlusion baseline (token occlusion: one token a variant; image occlusion: one image)."""
        rows = logit_rows(targets)

        def scores(logits: torch.Tensor) -> torch.Tensor:
            return target_scores(logits, self.input_ids, targets, rows)  # [B, T]

        with torch.no_grad():
            embeddings = self.embeddings()  # [1, L, D]
            reference = scores(self.logits(embeddings, rows))  # [1, T]
            occluded_scores = self.occluded_token_scores(embeddings, occluded, scores, rows)  # [V, T]
            return (reference - occluded_scores).float().cpu()

    @contextmanager
    def recording(self) -> Iterator[list[torch.Tensor]]:
        """Record the attention maps of the forwards run inside; the list holds one map per layer.
        Only on the eager path: the blockwise path keeps no map (`explainer.blockwise`)."""
        if self.blockwise:
            raise RuntimeError(
                "attention maps are recorded on the eager path only; on the blockwise path use "
                "attention_layers(), which recomputes them block by block from each layer's queries and keys"
            )
        self.recorder.maps = []
        self.recorder.active = True
        try:
            yield self.recorder.maps
        finally:
            self.recorder.active = False

    @contextmanager
    def attention_layers(self) -> Iterator[list[LayerAttention]]:
        """Run `attention_forward` and yield every language layer's attention probabilities, first layer
        first: the captured maps on the eager path, their blocks recomputed on the blockwise path."""
        if self.blockwise:
            with tapping(RelevanceTap(self.block_rows(), record=True)) as tap:
                self.attention_forward()
                yield [LayerAttention(layer, tap.block_rows) for layer in tap.layers]
            return
        with self.recording() as maps:
            self.attention_forward()
            yield [LayerAttention(attention) for attention in maps]


@dataclass
class ExplainBatch:
    """Several sequences explained together: each one's context, all of them sharing one relevance
    mode (one recorder) on one attention path."""

    contexts: list[ExplainContext]

    def __post_init__(self) -> None:
        if len({(id(context.recorder), context.attention) for context in self.contexts}) != 1:
            raise ValueError("the contexts of a batch must share one relevance mode and attention path")

    @property
    def model(self) -> nn.Module:
        return self.contexts[0].model

    @property
    def blockwise(self) -> bool:
        return self.contexts[0].blockwise

    @property
    def max_chunk_bytes(self) -> int:
        return self.contexts[0].max_chunk_bytes

    @property
    def lengths(self) -> list[int]:
        return [context.layout.seq_len for context in self.contexts]

    def padded_inputs(self) -> Mapping[str, torch.Tensor]:
        """The sequences as one batch [B, max L], right-padded (`pad_sequences`): every real position
        keeps its index and attends no pad, so each sequence's computation is the one it has alone."""
        if len(self.contexts) == 1:
            return self.contexts[0].inputs
        pad = self.model.config.get_text_config().pad_token_id
        return pad_sequences([context.inputs for context in self.contexts], pad, "right")

    def recording(self) -> AbstractContextManager[list[torch.Tensor]]:
        """Record the attention maps of the forwards run inside (`ExplainContext.recording`): [B, heads, L, L]
        per layer for a batch forward."""
        return self.contexts[0].recording()


class RelevanceMethod(ABC):
    """Maps targets of one sequence to relevance rows over its positions (registered by name in
    `explainer.methods.METHODS`)."""

    @abstractmethod
    def relevance(self, context: ExplainContext, targets: Sequence[Target]) -> torch.Tensor:
        """Relevance of every position for every target: [T, L] float32 on CPU."""

    def relevance_batch(self, batch: ExplainBatch, targets: Sequence[Sequence[Target]]) -> list[torch.Tensor]:
        """`relevance` of every sequence of `batch` for its targets: [T_b, L_b] float32 on CPU each.

        One sequence at a time here; a method that can share forwards between sequences overrides it
        with the same rows (`Chefer`)."""
        return [
            self.relevance(context, item_targets)
            for context, item_targets in zip(batch.contexts, targets, strict=True)
        ]
