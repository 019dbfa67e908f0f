"""`Explainer`: per-token relevance for a Gemma3-family vision-language model."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from PIL import Image
from torch import nn

from explainer import generation
from explainer._capture import relevance_mode
from explainer._sequence import (
    SequenceLayout,
    check_batch_one,
    check_target_positions,
    sequence_layout,
    token_type_ids_for,
)
from explainer.blockwise import DEFAULT_BLOCK_ROWS
from explainer.explanation import Explanation
from explainer.generation import GenerationError, build_prompt, check_question, full_sequence
from explainer.loading import ModelInfo, check_vision_language_model, load_pretrained, model_info
from explainer.methods import ATTENTION_PATHS, get_method
from explainer.methods.base import ExplainContext
from explainer.targets import Target, answer_targets
from explainer.words import answer_tokens, prompt_roles

DEFAULT_MAX_CHUNK_BYTES = 2 * 1024**3


class RelevanceMemoryError(MemoryError):
    """A sequence whose explanation cannot fit in the device's memory on the chosen path."""


def eager_attention_bytes(model: nn.Module, seq_len: int) -> int:
    """Memory the eager path needs beyond the forward's activations: every language layer's maps
    [heads, L, L] in the model's dtype, and one target's gradients, products and Ā in float32."""
    text = model.config.get_text_config()
    maps = text.num_hidden_layers * text.num_attention_heads * seq_len * seq_len
    return maps * (model.dtype.itemsize + 3 * 4)


def blockwise_bytes(model: nn.Module, seq_len: int, max_chunk_bytes: int) -> int:
    """Memory the blockwise path needs: what autograd keeps per layer for the backward, linear in
    L (≈ 14 hidden-size and 3 intermediate-size vectors per token, queries, keys and values), plus
    one block of attention scores (at most `DEFAULT_BLOCK_ROWS` rows, within `max_chunk_bytes`)."""
    text = model.config.get_text_config()
    head_dim = getattr(text, "head_dim", text.hidden_size // text.num_attention_heads)
    per_token = 14 * text.hidden_size + 3 * text.intermediate_size
    per_token += 2 * (text.num_attention_heads + 2 * text.num_key_value_heads) * head_dim
    block = min(max_chunk_bytes, 32 * text.num_attention_heads * seq_len * DEFAULT_BLOCK_ROWS)
    return text.num_hidden_layers * seq_len * per_token * model.dtype.itemsize + block


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of `device` (None where unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu" and hasattr(os, "sysconf"):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


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
        if attention not in ATTENTION_PATHS:
            raise ValueError(f"attention {attention!r} is not one of {', '.join(ATTENTION_PATHS)}")
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
        """ "eager" or "blockwise" for a sequence of `seq_len` tokens.

        "auto" (the default) takes eager attention while its maps fit in the memory budget
        (`max_chunk_bytes`): it is faster for short prompts. Beyond, the blockwise path, whose memory
        grows linearly with length. A path that cannot fit in the device's memory at all raises
        `RelevanceMemoryError` saying how long the sequence is, what it would need, what to change.
        """
        attention = attention or self.attention
        if attention not in ATTENTION_PATHS:
            raise ValueError(f"attention {attention!r} is not one of {', '.join(ATTENTION_PATHS)}")
        eager = eager_attention_bytes(self.model, seq_len)
        if attention == "auto":
            attention = "eager" if eager <= self.max_chunk_bytes else "blockwise"
        available = device_memory_bytes(self.device)
        need = eager if attention == "eager" else blockwise_bytes(self.model, seq_len, self.max_chunk_bytes)
        if available is not None and need > available:
            advice = (
                "use attention='blockwise' (or 'auto'), whose memory grows linearly with length"
                if attention == "eager"
                else "explain fewer images or slices per prompt, a shorter answer (max_new_tokens), "
                "or run on a device with more memory"
            )
            raise RelevanceMemoryError(
                f"the sequence is {seq_len:,} tokens: {attention} relevance needs about "
                f"{need / 2**30:,.1f} GiB, more than the {available / 2**30:,.1f} GiB of {self.device}; {advice}"
            )
        return attention

    @contextmanager
    def context(
        self, inputs: Mapping[str, torch.Tensor], attention: str | None = None
    ) -> Iterator[ExplainContext]:
        """One sequence ready for relevance methods and perturbations: inputs on the model's device,
        its layout, the model in relevance mode on the attention path for its length (undone on
        exit) and this explainer's memory budget."""
        prepared = self.prepare_inputs(inputs)
        layout = self.layout(prepared)
        path = self.attention_path(layout.seq_len, attention)
        with relevance_mode(self.model, path) as recorder:
            yield ExplainContext(self.model, prepared, layout, recorder, self.max_chunk_bytes, path)

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
        relevance_method = get_method(method)
        check_batch_one(inputs)
        seq_len = inputs["input_ids"].shape[1]
        targets = [target if isinstance(target, Target) else Target((int(target),)) for target in targets]
        for target in targets:
            check_target_positions(list(target.positions), seq_len)
        if not targets:
            return torch.zeros(0, seq_len)
        distinct: dict[tuple[int, ...], int] = {}
        for target in targets:
            distinct.setdefault(target.positions, len(distinct))
        with self.context(inputs, attention) as context:
            rows = relevance_method.relevance(context, [Target(positions) for positions in distinct])
        return rows[[distinct[target.positions] for target in targets]].float()

    def explain(
        self,
        images: Image.Image | Sequence[Image.Image],
        question: str,
        *,
        max_new_tokens: int = 64,
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
        if self.processor is None:
            raise ValueError(
                "explain() needs a processor: Explainer(model, processor) or Explainer.from_pretrained"
            )
        images = [images] if isinstance(images, Image.Image) else list(images)
        started = time.perf_counter()
        try:
            prompt = build_prompt(
                self.processor,
                images,
                question,
                system_prompt,
                max_question_tokens=max_question_tokens,
                image_labels=image_labels,
            )
            context_length = self.model.config.get_text_config().max_position_embeddings
            if prompt.length + max_new_tokens > context_length:
                raise ValueError(
                    f"the prompt is {prompt.length:,} tokens ({len(images)} images) and the answer may add "
                    f"{max_new_tokens}, beyond the model's context of {context_length:,} tokens; sample "
                    "fewer slices per volume (slices_per_volume) or give fewer images per item"
                )
            path = self.attention_path(prompt.length + max_new_tokens, attention)
            if answer is not None:  # explained as given: the tokens the model is scored on
                check_question(self.processor.tokenizer, answer)
                answer_ids = torch.tensor(
                    self.processor.tokenizer(answer, add_special_tokens=False)["input_ids"], dtype=torch.long
                )
            else:
                with relevance_mode(self.model, path):  # the answer comes from the computation explained
                    answer_ids = generation.generate_answer(
                        self.model, prompt, max_new_tokens=max_new_tokens, generation_kwargs=generation_kwargs
                    )
        except Exception as exc:
            raise GenerationError(f"{type(exc).__name__}: {exc}") from exc
        generated = time.perf_counter()

        tokenizer = self.processor.tokenizer
        answer_text, tokens = answer_tokens(tokenizer, answer_ids, prompt.length)
        explained_targets = answer_targets(tokens, targets)
        inputs = full_sequence(prompt, answer_ids)
        layout = self.layout(inputs)
        relevance = self.relevance(inputs, explained_targets, method, path)
        prompt_text_positions = layout.text_positions[layout.text_positions < prompt.length]
        strings, roles = prompt_roles(tokenizer, prompt, prompt_text_positions)
        rows, cols = layout.grid
        return Explanation(
            question=question,
            answer=answer_text.strip(),
            tokens=tokens,
            targets=explained_targets,
            image_maps=[relevance[:, run].reshape(-1, rows, cols).numpy() for run in layout.image_token_runs],
            text_relevance=relevance[:, prompt_text_positions].numpy(),
            prompt_tokens=strings,
            prompt_token_roles=roles,
            images=images,
            method=method,
            model_id=self.info.model_id,
            model_revision=self.info.revision,
            system_prompt=system_prompt,
            image_labels=list(image_labels) if image_labels is not None else [None] * len(images),
            timings={
                "generate_seconds": generated - started,
                "explain_seconds": time.perf_counter() - generated,
                "answer_tokens": float(len(tokens)),
            },
        )
