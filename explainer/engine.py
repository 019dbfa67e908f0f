"""`Explainer`: per-token relevance for a Gemma3-family vision-language model."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from PIL import Image
from torch import nn

from explainer import _explain
from explainer._capture import relevance_mode, use_eager_attention
from explainer._sequence import (
    SequenceLayout,
    check_batch_one,
    check_target_positions,
    sequence_layout,
    token_type_ids_for,
)
from explainer.explanation import Explanation
from explainer.loading import ModelInfo, check_vision_language_model, freeze, load_pretrained, model_info
from explainer.methods import ExplainContext, get_method
from explainer.targets import Target

DEFAULT_MAX_CHUNK_BYTES = 2 * 1024**3


class Explainer:
    """Explains what a Gemma3-family VLM's answer tokens were computed from.

    Wrapping a model puts it in eval mode, freezes its parameters and switches its language model
    to eager attention (the only implementation that returns attention probabilities).

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
    ) -> None:
        check_vision_language_model(model)
        freeze(model)
        use_eager_attention(model)
        self.model = model
        self.processor = processor
        self.max_chunk_bytes = max_chunk_bytes
        self.info = info or model_info(model)

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

    def relevance_for_targets(
        self, inputs: Mapping[str, torch.Tensor], targets: list[Target], method: str = "chefer"
    ) -> torch.Tensor:
        """Relevance rows [len(targets), seq_len] (float32, CPU) for arbitrary targets."""
        relevance_method = get_method(method)
        prepared = self.prepare_inputs(inputs)
        layout = self.layout(prepared)
        for target in targets:
            check_target_positions(list(target.positions), layout.seq_len)
        with relevance_mode(self.model) as recorder:
            context = ExplainContext(self.model, prepared, layout, recorder, self.max_chunk_bytes)
            return relevance_method.relevance(context, targets)

    def relevance(
        self, inputs: Mapping[str, torch.Tensor], target_positions: list[int], method: str = "chefer"
    ) -> torch.Tensor:
        """Relevance of every position for the tokens at `target_positions`.

        Args:
            inputs: batch-1 tensors of the full sequence (prompt + answer): `input_ids`,
                `attention_mask`, `pixel_values`, optionally `token_type_ids` (else built from
                `config.image_token_id`).
            target_positions: positions p; the token at p is explained through logits[p-1, token].
            method: "chefer", "rollout", "raw_attention" or "occlusion".
        Returns:
            float32 [len(target_positions), seq_len] on CPU; row k is row p_k - 1 of R.
        """
        check_batch_one(inputs)
        seq_len = inputs["input_ids"].shape[1]
        targets = [Target((p,)) for p in check_target_positions(target_positions, seq_len)]
        return self.relevance_for_targets(inputs, targets, method)

    def explain(
        self,
        images: Image.Image | list[Image.Image],
        question: str,
        *,
        max_new_tokens: int = 64,
        targets: str | list[str] = "all",
        method: str = "chefer",
        system_prompt: str | None = None,
        generation_kwargs: dict | None = None,
    ) -> Explanation:
        """Answer `question` about `images` with the chat template, then explain the answer.

        Generation is greedy unless `generation_kwargs` say otherwise. Every target is explained from
        one teacher-forced forward over prompt + answer, gradients batched within the memory budget.

        Args:
            targets: "all" (every answer token, every answer word and the whole answer), "answer"
                (the whole answer only) or a list of words (those answer words, never prompt words,
                plus the whole answer).
            method: "chefer", "rollout", "raw_attention" or "occlusion".
        """
        return _explain.explain(
            self,
            images,
            question,
            max_new_tokens=max_new_tokens,
            targets=targets,
            method=method,
            system_prompt=system_prompt,
            generation_kwargs=generation_kwargs,
        )
