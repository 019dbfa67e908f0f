"""`Explainer`: per-token relevance for a Gemma3-family vision-language model."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import nn

from explainer import generation
from explainer._capture import relevance_mode
from explainer._forward import embed_inputs, forward_embeddings
from explainer._sequence import (
    SequenceLayout,
    check_batch_one,
    check_target_positions,
    pad_sequences,
    sequence_layout,
    token_type_ids_for,
)
from explainer.blockwise import DEFAULT_BLOCK_ROWS
from explainer.explanation import AnswerToken, Explanation
from explainer.generation import GenerationError, Prompt, build_prompt, check_question, full_sequence
from explainer.loading import ModelInfo, check_vision_language_model, load_pretrained, model_info
from explainer.methods import ATTENTION_PATHS, get_method
from explainer.methods.base import ExplainContext
from explainer.methods.chefer import gradient_weighted_attention, propagate_rows
from explainer.targets import Target, answer_targets, logit_rows, start_rows, target_scores
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
        return self._on_device(inputs)

    def _on_device(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`prepare_inputs` for a batch of any size."""
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
        distinct, index = _distinct(targets)
        with self.context(inputs, attention) as context:
            rows = relevance_method.relevance(context, distinct)
        return rows[index].float()

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
        max_new_tokens: int = 64,
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
        Chefer relevance on the eager path on right-padded batches, where no real position attends a
        pad (rows equal to float rounding, `tests/explainer/test_batch.py`). Items are batched by
        length (less padding), on the eager path only, and only as many as the memory budget holds
        (`max_chunk_bytes` for every item's attention maps); items on the blockwise path, and the
        relevance of other methods, run one item at a time. A batch that fails is redone one item at
        a time, so that only the failing item gets the error. Timings of a batch are divided evenly
        over its items.
        """
        if self.processor is None:
            raise ValueError(
                "explain() needs a processor: Explainer(model, processor) or Explainer.from_pretrained"
            )
        items = [_Item(request) for request in requests]
        for item in items:
            with item.timed("generate_seconds"):
                try:
                    self._prompt(item, max_new_tokens, system_prompt, max_question_tokens, attention)
                except Exception as exc:
                    item.fail_generation(exc)
        pending = [item for item in items if item.outcome is None and item.answer_ids is None]
        for group in _groups(pending, batch_size, lambda item: item.prompt.length, _eager):
            with _timed(group, "generate_seconds"):
                self._generate(group, max_new_tokens, generation_kwargs)
        for item in _live(items):
            with item.timed("explain_seconds"):
                try:
                    self._sequence(item, targets)
                except Exception as exc:
                    item.fail(exc)
        batchable = [
            item for item in _live(items) if method == "chefer" and item.path == "eager" and item.targets
        ]
        for group in _groups(batchable, batch_size, lambda item: item.layout.seq_len, self._fits_eager):
            if len(group) > 1:
                with _timed(group, "explain_seconds"):
                    try:
                        rows = self._chefer_batch(
                            [item.inputs for item in group], [item.targets for item in group]
                        )
                    except Exception:  # redone one item at a time below: the failing item gets the error
                        rows = [None] * len(group)
                for item, item_rows in zip(group, rows, strict=True):
                    item.relevance = item_rows
        for item in _live(items):
            with item.timed("explain_seconds"):
                try:
                    if item.relevance is None:
                        item.relevance = self.relevance(item.inputs, item.targets, method, item.path)
                    item.outcome = self._explanation(item, method, system_prompt)
                except Exception as exc:
                    item.fail(exc)
        for item in items:
            if isinstance(item.outcome, Explanation):
                item.outcome.timings = {**item.seconds, "answer_tokens": float(len(item.tokens))}
        return [item.outcome for item in items]

    def _prompt(
        self,
        item: _Item,
        max_new_tokens: int,
        system_prompt: str | None,
        max_question_tokens: int | None,
        attention: str | None,
    ) -> None:
        """The item's prompt, attention path and, for a given answer, its token ids."""
        request = item.request
        item.prompt = build_prompt(
            self.processor,
            item.images,
            request.question,
            system_prompt,
            max_question_tokens=max_question_tokens,
            image_labels=request.image_labels,
        )
        context_length = self.model.config.get_text_config().max_position_embeddings
        if item.prompt.length + max_new_tokens > context_length:
            raise ValueError(
                f"the prompt is {item.prompt.length:,} tokens ({len(item.images)} images) and the answer may "
                f"add {max_new_tokens}, beyond the model's context of {context_length:,} tokens; sample "
                "fewer slices per volume (slices_per_volume) or give fewer images per item"
            )
        item.path = self.attention_path(item.prompt.length + max_new_tokens, attention)
        if request.answer is not None:  # explained as given: the tokens the model is scored on
            check_question(self.processor.tokenizer, request.answer)
            item.answer_ids = torch.tensor(
                self.processor.tokenizer(request.answer, add_special_tokens=False)["input_ids"],
                dtype=torch.long,
            )

    def _generate(self, group: list[_Item], max_new_tokens: int, generation_kwargs: dict | None) -> None:
        """Answers of a group of items, each generated on its attention path (the answer comes from the
        computation explained): one `generate` call for several (all eager), or, for one item or after
        a failed batch, one call per item."""
        if len(group) > 1:
            try:
                with relevance_mode(self.model, group[0].path):
                    answers = generation.generate_answers(
                        self.model,
                        [item.prompt for item in group],
                        max_new_tokens=max_new_tokens,
                        generation_kwargs=generation_kwargs,
                    )
                for item, answer_ids in zip(group, answers, strict=True):
                    item.answer_ids = answer_ids
                return
            except Exception:  # redone one item at a time: the failing item gets the error
                pass
        for item in group:
            try:
                with relevance_mode(self.model, item.path):
                    item.answer_ids = generation.generate_answer(
                        self.model,
                        item.prompt,
                        max_new_tokens=max_new_tokens,
                        generation_kwargs=generation_kwargs,
                    )
            except Exception as exc:
                item.fail_generation(exc)

    def _sequence(self, item: _Item, targets: str | list[str]) -> None:
        """The item's answer tokens, its targets, the full sequence and its layout."""
        item.answer_text, item.tokens = answer_tokens(
            self.processor.tokenizer, item.answer_ids, item.prompt.length
        )
        item.targets = answer_targets(item.tokens, targets)
        item.inputs = full_sequence(item.prompt, item.answer_ids)
        item.layout = self.layout(item.inputs)

    def _fits_eager(self, group: list[_Item]) -> bool:
        """Whether a group's attention maps fit in the memory budget at once (padded to its longest)."""
        seq_len = max(item.layout.seq_len for item in group)
        return len(group) * eager_attention_bytes(self.model, seq_len) <= self.max_chunk_bytes

    def _chefer_batch(
        self, sequences: Sequence[Mapping[str, torch.Tensor]], targets: Sequence[Sequence[Target]]
    ) -> list[torch.Tensor]:
        """Chefer rows of several sequences' targets from one eager forward over them, right-padded:
        [T_b, L_b] float32 on CPU per sequence, as `relevance(sequences[b], targets[b])` gives them.

        Sequences do not interact in a batch, so the gradient of Σ_b y_b (one target of each) holds
        each y_b's gradient in row b: target k of every sequence shares one vector-Jacobian product.
        """
        lengths = [sequence["input_ids"].shape[1] for sequence in sequences]
        for length, sequence_targets in zip(lengths, targets, strict=True):
            for target in sequence_targets:
                check_target_positions(list(target.positions), length)
        pad = self.model.config.get_text_config().pad_token_id
        batch = self._on_device(pad_sequences(sequences, pad, "right"))
        distinct = [_distinct(sequence_targets) for sequence_targets in targets]
        with relevance_mode(self.model, "eager") as recorder, torch.enable_grad():
            embeddings = embed_inputs(self.model, batch).detach().requires_grad_(True)
            rows_read = logit_rows([target for unique, _ in distinct for target in unique])
            recorder.active = True
            try:
                logits = forward_embeddings(self.model, embeddings, batch, rows_read)  # [B, R, vocab]
            finally:
                recorder.active = False
            maps = recorder.maps
            scores = [
                target_scores(logits[b : b + 1], batch["input_ids"][b], unique, rows_read)[0]
                for b, (unique, _) in enumerate(distinct)
            ]
            n_slots = max(len(unique) for unique, _ in distinct)
            slots = torch.stack([sum(score[k] for score in scores if k < len(score)) for k in range(n_slots)])
            seq_len, heads = maps[0].shape[-1], maps[0].shape[1]
            per_slot = 3 * len(maps) * heads * len(sequences) * seq_len * seq_len * 4  # gradients, product, Ā
            chunk = max(1, self.max_chunk_bytes // per_slot)
            starts = [start_rows(unique, seq_len) for unique, _ in distinct]
            rows: list[list[torch.Tensor]] = [[] for _ in sequences]
            for first in range(0, n_slots, chunk):
                chunk_slots = slots[first : first + chunk]
                basis = torch.eye(chunk_slots.numel(), device=chunk_slots.device)
                gradients = torch.autograd.grad(  # each [K, B, heads, L, L]
                    chunk_slots, maps, grad_outputs=basis, is_grads_batched=True, retain_graph=True
                )
                for b, (unique, _) in enumerate(distinct):
                    n = min(len(unique), first + chunk) - first
                    if n > 0:
                        cams = [
                            gradient_weighted_attention(g[:n, b : b + 1], a[b : b + 1].detach())
                            for g, a in zip(gradients, maps, strict=True)
                        ]
                        rows[b].append(propagate_rows(starts[b][first : first + n], cams)[:, : lengths[b]])
                del gradients
        return [torch.cat(item_rows)[index] for item_rows, (_, index) in zip(rows, distinct, strict=True)]

    def _explanation(self, item: _Item, method: str, system_prompt: str | None) -> Explanation:
        layout, prompt = item.layout, item.prompt
        prompt_text_positions = layout.text_positions[layout.text_positions < prompt.length]
        strings, roles = prompt_roles(self.processor.tokenizer, prompt, prompt_text_positions)
        rows, cols = layout.grid
        relevance = item.relevance
        labels = item.request.image_labels
        return Explanation(
            question=item.request.question,
            answer=item.answer_text.strip(),
            tokens=item.tokens,
            targets=item.targets,
            image_maps=[relevance[:, run].reshape(-1, rows, cols).numpy() for run in layout.image_token_runs],
            text_relevance=relevance[:, prompt_text_positions].numpy(),
            prompt_tokens=strings,
            prompt_token_roles=roles,
            images=item.images,
            method=method,
            model_id=self.info.model_id,
            model_revision=self.info.revision,
            system_prompt=system_prompt,
            image_labels=list(labels) if labels is not None else [None] * len(item.images),
        )


@dataclass(frozen=True)
class ExplainRequest:
    """One item of `Explainer.explain_batch`: the arguments of `explain` that differ between items."""

    images: Image.Image | Sequence[Image.Image]
    question: str
    image_labels: Sequence[str | None] | None = None
    answer: str | None = None


@dataclass
class _Item:
    """A request on its way through `explain_batch`: what each step made of it, its outcome once
    known (an `Explanation` or the exception), and the seconds it took per stage."""

    request: ExplainRequest
    images: list[Image.Image] = field(init=False)
    prompt: Prompt | None = None
    path: str = "eager"
    answer_ids: torch.Tensor | None = None
    answer_text: str = ""
    tokens: list[AnswerToken] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    inputs: dict[str, torch.Tensor] | None = None
    layout: SequenceLayout | None = None
    relevance: torch.Tensor | None = None
    outcome: Explanation | Exception | None = None
    seconds: dict[str, float] = field(
        default_factory=lambda: {"generate_seconds": 0.0, "explain_seconds": 0.0}
    )

    def __post_init__(self) -> None:
        images = self.request.images
        self.images = [images] if isinstance(images, Image.Image) else list(images)

    def fail(self, error: Exception) -> None:
        self.outcome = error

    def fail_generation(self, error: Exception) -> None:
        """Prompting or generating failed: a `GenerationError` whose cause is `error`."""
        self.outcome = GenerationError(f"{type(error).__name__}: {error}")
        self.outcome.__cause__ = error

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        with _timed([self], stage):
            yield


@contextmanager
def _timed(items: Sequence[_Item], stage: str) -> Iterator[None]:
    """Add the block's seconds to `stage`, divided evenly over `items`."""
    started = time.perf_counter()
    try:
        yield
    finally:
        share = (time.perf_counter() - started) / max(1, len(items))
        for item in items:
            item.seconds[stage] += share


def _groups(
    items: Sequence[_Item],
    batch_size: int,
    length: Callable[[_Item], int],
    fits: Callable[[list[_Item]], bool],
) -> list[list[_Item]]:
    """Items in groups of at most `batch_size`, by `length` (shortest first: the least padding), each
    group one that `fits` accepts (a group of one always does)."""
    groups: list[list[_Item]] = []
    for item in sorted(items, key=length):
        if groups and len(groups[-1]) < batch_size and fits([*groups[-1], item]):
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _live(items: Sequence[_Item]) -> list[_Item]:
    """The items without an outcome yet."""
    return [item for item in items if item.outcome is None]


def _eager(group: Sequence[_Item]) -> bool:
    """Whether every item runs on the eager path, the one that batches: the blockwise path masks with
    -inf, and a left pad's fully masked row would turn its values into NaN."""
    return all(item.path == "eager" for item in group)


def _distinct(targets: Sequence[Target]) -> tuple[list[Target], list[int]]:
    """Targets with distinct positions (computed once), and where each of `targets` finds its row."""
    distinct: dict[tuple[int, ...], int] = {}
    for target in targets:
        distinct.setdefault(target.positions, len(distinct))
    return [Target(positions) for positions in distinct], [distinct[target.positions] for target in targets]
