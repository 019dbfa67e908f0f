"""`Explainer`: per-token relevance for a Gemma3-family vision-language model (the public API).

The memory model lives in `explainer.memory`, the state machine behind `explain_batch` in
`explainer.batching`, the relevance rules in `explainer.methods`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from PIL import Image
from torch import nn

from explainer import memory
from explainer._capture import relevance_mode
from explainer._sequence import (
    SequenceLayout,
    check_batch_one,
    check_target_positions,
    sequence_layout,
    token_type_ids_for,
)
from explainer.batching import ExplainOptions, ExplainRequest, explain_requests
from explainer.explanation import Explanation
from explainer.loading import ModelInfo, check_vision_language_model, load_pretrained, model_info
from explainer.memory import DEFAULT_MAX_CHUNK_BYTES
from explainer.methods import get_method
from explainer.methods.base import ExplainBatch, ExplainContext
from explainer.targets import Target, distinct_targets
from vocabulary.defaults import DEFAULT_MAX_NEW_TOKENS

__all__ = ["ExplainRequest", "Explainer"]


class Explainer:
    """Explains what a Gemma3-family VLM's answer tokens were computed from.

    Wrapping a model changes nothing on it. Generation and relevance run inside `relevance_mode`:
    eval mode, frozen parameters and, on the language model, eager attention (the only implementation
    of transformers' that returns attention probabilities) or, for long prompts, the blockwise one
    (`explainer.blockwise`: no L×L map kept; `attention` picks, see `attention_path`), all undone
    when they return. A model that cannot switch attention is refused here, not at its first item.

    Example:
        >>> explainer = Explainer.from_pretrained("google/medgemma-1.5-4b-it")
        >>> explanation = explainer.explain(image, "Is there a pneumothorax?")
        >>> explanation.answer_map()  # [16, 16] relevance of the image cells for the whole answer
    """

    def __init__(
        self,
        model: nn.Module,
        processor=None,
        *,
        max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
        info: ModelInfo | None = None,
        attention: str = "auto",
    ) -> None:
        check_vision_language_model(model)
        memory.check_attention(attention)
        with relevance_mode(model):  # raises AttentionUnavailable with the fix; leaves the model as it was
            pass
        self.model = model
        self.processor = processor
        self.max_chunk_bytes = max_chunk_bytes
        self.info = info or model_info(model)
        self.attention = attention

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        device_map: str | dict | None = None,
        *,
        revision: str | None = None,
        max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    ) -> Explainer:
        """Load a checkpoint (hub id, cached or online; or a local folder) with its processor."""
        model, processor = load_pretrained(
            str(name_or_path), device=device, dtype=dtype, device_map=device_map, revision=revision
        )
        info = ModelInfo(model_id=str(name_or_path), revision=model_info(model).revision or revision)
        return cls(model, processor, max_chunk_bytes=max_chunk_bytes, info=info)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def prepare_inputs(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Batch-1 inputs on the model's device, `token_type_ids` filled in from the image token id."""
        check_batch_one(inputs)
        prepared = {
            key: value.to(self.device)
            for key, value in inputs.items()
            if key in ("input_ids", "attention_mask", "pixel_values", "token_type_ids") and value is not None
        }
        prepared["token_type_ids"] = token_type_ids_for(prepared, self.model.config)
        if "pixel_values" in prepared:
            prepared["pixel_values"] = prepared["pixel_values"].to(self.model.dtype)
        return prepared

    def layout(self, inputs: Mapping[str, torch.Tensor]) -> SequenceLayout:
        return sequence_layout(inputs["input_ids"], self.model.config)

    def attention_path(self, seq_len: int, attention: str | None = None) -> str:
        """ "eager" or "blockwise" for a sequence of `seq_len` tokens (`explainer.memory.attention_path`):
        "auto" (the default) takes eager attention while its maps fit in `max_chunk_bytes`, else the
        blockwise path; a path that cannot fit in the device's memory raises `RelevanceMemoryError`."""
        return memory.attention_path(self.model, seq_len, attention or self.attention, self.max_chunk_bytes)

    @contextmanager
    def context(
        self, inputs: Mapping[str, torch.Tensor], attention: str | None = None
    ) -> Iterator[ExplainContext]:
        """One sequence ready for relevance methods and perturbations: inputs on the model's device,
        its layout, the model in relevance mode on the attention path for its length (undone on
        exit) and this explainer's memory budget."""
        with self.batch_context([inputs], attention) as batch:
            yield batch.contexts[0]

    @contextmanager
    def batch_context(
        self, sequences: Sequence[Mapping[str, torch.Tensor]], attention: str | None = None
    ) -> Iterator[ExplainBatch]:
        """`context` for several sequences at once: one relevance mode, on the path planned for all of
        them together (the longest, times their number on the eager path)."""
        prepared = [self.prepare_inputs(inputs) for inputs in sequences]
        layouts = [self.layout(inputs) for inputs in prepared]
        longest = max(layout.seq_len for layout in layouts)
        path = memory.attention_path(
            self.model, longest, attention or self.attention, self.max_chunk_bytes, batch=len(sequences)
        )
        with relevance_mode(self.model, path) as recorder:
            yield ExplainBatch(
                [
                    ExplainContext(self.model, inputs, layout, recorder, self.max_chunk_bytes, path)
                    for inputs, layout in zip(prepared, layouts, strict=True)
                ]
            )

    def relevance(
        self,
        inputs: Mapping[str, torch.Tensor],
        targets: Sequence[int | Target],
        method: str = "chefer",
        attention: str | None = None,
    ) -> torch.Tensor:
        """Relevance of every position for each target.

        Args:
            inputs: batch-1 tensors of the full sequence (prompt + answer): `input_ids`,
                `attention_mask`, `pixel_values`, optionally `token_type_ids` (else built from
                `config.image_token_id`).
            targets: positions p (the token at p, explained through logits[p-1, token]) or
                `Target`s (y = the sum of those logits over the target's positions).
            method: a name in `explainer.methods.METHODS`: "chefer", "rollout", "raw_attention",
                "occlusion" or "pixel_occlusion".
            attention: "auto", "eager" or "blockwise" (see `attention_path`); None: the explainer's.
        Returns:
            float32 [len(targets), seq_len] on CPU; row k is row p_k - 1 of R for a position target.
            Targets with the same positions are computed once.
        """
        check_batch_one(inputs)
        [rows] = self._rows([inputs], [targets], method, attention)
        return rows

    def relevance_batch(
        self,
        sequences: Sequence[Mapping[str, torch.Tensor]],
        targets: Sequence[Sequence[int | Target]],
        method: str = "chefer",
        attention: str | None = None,
    ) -> list[torch.Tensor]:
        """`relevance` of several sequences, explained together where the method can share forwards
        between them (`RelevanceMethod.relevance_batch`; Chefer on the eager path): [T_b, L_b] float32
        on CPU each, the rows `relevance(sequences[b], targets[b])` gives, to float rounding."""
        return self._rows(sequences, targets, method, attention)

    def _rows(
        self,
        sequences: Sequence[Mapping[str, torch.Tensor]],
        targets: Sequence[Sequence[int | Target]],
        method: str,
        attention: str | None,
    ) -> list[torch.Tensor]:
        relevance_method = get_method(method)
        lengths = [inputs["input_ids"].shape[1] for inputs in sequences]
        plans = []  # (distinct targets, where each target finds its row) per sequence
        for item_targets, seq_len in zip(targets, lengths, strict=True):
            item_targets = [t if isinstance(t, Target) else Target((int(t),)) for t in item_targets]
            for target in item_targets:
                check_target_positions(list(target.positions), seq_len)
            plans.append(distinct_targets(item_targets))
        rows = [torch.zeros(0, seq_len) for seq_len in lengths]
        explained = [b for b, (distinct, _) in enumerate(plans) if distinct]
        if explained:
            with self.batch_context([sequences[b] for b in explained], attention) as batch:
                computed = relevance_method.relevance_batch(batch, [plans[b][0] for b in explained])
            for b, item_rows in zip(explained, computed, strict=True):
                rows[b] = item_rows[plans[b][1]].float()
        return rows

    def explain(
        self,
        images: Image.Image | Sequence[Image.Image],
        question: str,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        targets: str | list[str] = "all",
        method: str = "chefer",
        system_prompt: str | None = None,
        generation_kwargs: dict | None = None,
        max_question_tokens: int | None = None,
        attention: str | None = None,
        image_labels: Sequence[str | None] | None = None,
        answer: str | None = None,
    ) -> Explanation:
        """Answer `question` about `images` with the chat template, then explain the answer.

        Generation is greedy unless `generation_kwargs` say otherwise. Every target is explained from
        one teacher-forced forward over prompt + answer, gradients batched within the memory budget.

        Args:
            targets: "all" (every answer token, every answer word and the whole answer), "answer"
                (the whole answer only) or a list of words (those answer words, never prompt words,
                plus the whole answer).
            method: a name in `explainer.methods.METHODS` (see `relevance`).
            max_question_tokens: refuse longer questions before the model runs (None: no limit).
                Questions holding the tokenizer's special tokens (chat control tokens) are refused.
            attention: "auto", "eager" or "blockwise" (see `attention_path`), chosen for the prompt
                plus `max_new_tokens`; generation and relevance run on the same path. None: the
                explainer's.
            image_labels: text written before each image (one per image, None for none), e.g.
                "prior" and "current", or a volume's "slice 12 of 85".
            answer: the answer the model gave (a logged output): explained as given, teacher-forced,
                without generating; None generates one. Checked like questions (no control tokens).
        Raises:
            GenerationError: prompting or generation failed (the original error is its cause).
        """
        [outcome] = self.explain_batch(
            [ExplainRequest(images, question, image_labels, answer)],
            max_new_tokens=max_new_tokens,
            targets=targets,
            method=method,
            system_prompt=system_prompt,
            generation_kwargs=generation_kwargs,
            max_question_tokens=max_question_tokens,
            attention=attention,
        )
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def explain_batch(
        self,
        requests: Sequence[ExplainRequest],
        *,
        batch_size: int = 8,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        targets: str | list[str] = "all",
        method: str = "chefer",
        system_prompt: str | None = None,
        generation_kwargs: dict | None = None,
        max_question_tokens: int | None = None,
        attention: str | None = None,
    ) -> list[Explanation | Exception]:
        """`explain` for several items, up to `batch_size` of them generated and explained together.

        Returns each request's `Explanation`, or the exception that `explain` would have raised for it
        (a `GenerationError` for prompting and generation). The outputs are those of `explain` one
        item at a time: generation runs on left-padded batches (greedy answers are the same), and
        relevance through the method's `relevance_batch` (Chefer: one forward over right-padded
        sequences, where no real position attends a pad; rows equal to float rounding,
        `tests/explainer/test_batch.py`). Items are batched by length (less padding), on the eager
        path only, and only as many as the memory budget holds (`explainer.memory.eager_batch_fits`);
        items on the blockwise path run one at a time. A batch that fails is redone one item at a
        time, so that only the failing item gets the error (`explainer.batching`). Timings of a batch
        are divided evenly over its items.
        """
        if self.processor is None:
            raise ValueError(
                "explain() needs a processor: Explainer(model, processor) or Explainer.from_pretrained"
            )
        options = ExplainOptions(
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            targets=targets,
            method=method,
            system_prompt=system_prompt,
            generation_kwargs=generation_kwargs,
            max_question_tokens=max_question_tokens,
            attention=attention,
        )
        return explain_requests(self, requests, options)
