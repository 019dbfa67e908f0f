"""Several requests through the explainer together: the state machine behind `Explainer.explain_batch`.

Each request becomes an `Item` that the stages advance (prompt, answer, sequence, relevance,
explanation) until it has an outcome: its `Explanation`, or the exception `explain` would have raised
for it. Items are grouped by length (the least padding). Generation runs on left-padded batches of
items on the eager path (`generation.generate_answers`: greedy answers are those of one prompt at a
time); relevance runs on groups whose attention maps fit the memory budget together
(`explainer.memory.eager_batch_fits`), through the method's own `relevance_batch`. A batch that
fails is redone one item at a time, so that only the failing item gets the error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from PIL import Image

from explainer import generation, memory
from explainer._capture import relevance_mode
from explainer._sequence import SequenceLayout
from explainer.explanation import AnswerToken, Explanation
from explainer.generation import GenerationError, Prompt, build_prompt, check_question, full_sequence
from explainer.targets import Target, answer_targets
from explainer.words import answer_tokens, prompt_roles

if TYPE_CHECKING:
    from explainer.engine import Explainer


@dataclass(frozen=True)
class ExplainRequest:
    """One item of `Explainer.explain_batch`: the arguments of `explain` that differ between items."""

    images: Image.Image | Sequence[Image.Image]
    question: str
    image_labels: Sequence[str | None] | None = None
    answer: str | None = None


@dataclass(frozen=True)
class ExplainOptions:
    """The arguments of `Explainer.explain_batch` that every item shares (documented there)."""

    batch_size: int
    max_new_tokens: int
    targets: str | list[str]
    method: str
    system_prompt: str | None
    generation_kwargs: dict | None
    max_question_tokens: int | None
    attention: str | None


@dataclass
class Item:
    """A request on its way through the stages: what each made of it, its outcome once known (an
    `Explanation` or the exception), and the seconds it took per stage."""

    request: ExplainRequest
    images: list[Image.Image] = field(init=False)
    prompt: Prompt | None = None
    path: str = "eager"
    answer_ids: torch.Tensor | None = None
    answer_text: str = ""  # decoded, outer whitespace stripped (`answer_tokens`)
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


def explain_requests(
    explainer: Explainer, requests: Sequence[ExplainRequest], options: ExplainOptions
) -> list[Explanation | Exception]:
    """Each request's `Explanation` or exception, in order (see `Explainer.explain_batch`)."""
    items = [Item(request) for request in requests]
    for item in items:
        with timed([item], "generate_seconds"):
            try:
                _prompt(explainer, item, options)
            except Exception as exc:
                item.fail_generation(exc)
    pending = [item for item in items if item.outcome is None and item.answer_ids is None]
    for group in groups(pending, options.batch_size, lambda item: item.prompt.length, _eager):
        with timed(group, "generate_seconds"):
            _generate(explainer.model, group, options)
    for item in live(items):
        with timed([item], "explain_seconds"):
            try:
                _sequence(explainer, item, options.targets)
            except Exception as exc:
                item.fail(exc)

    def fits(group: list[Item]) -> bool:
        lengths = [item.layout.seq_len for item in group]
        return _eager(group) and memory.eager_batch_fits(explainer.model, lengths, explainer.max_chunk_bytes)

    explained = [item for item in live(items) if item.targets]
    for group in groups(explained, options.batch_size, lambda item: item.layout.seq_len, fits):
        if len(group) > 1:
            with timed(group, "explain_seconds"):
                sequences, targets = [item.inputs for item in group], [item.targets for item in group]
                try:
                    rows = explainer.relevance_batch(sequences, targets, options.method, "eager")
                except Exception:  # redone one item at a time below: the failing item gets the error
                    rows = [None] * len(group)
            for item, item_rows in zip(group, rows, strict=True):
                item.relevance = item_rows
    for item in live(items):
        with timed([item], "explain_seconds"):
            try:
                if item.relevance is None:
                    item.relevance = explainer.relevance(item.inputs, item.targets, options.method, item.path)
                item.outcome = _explanation(explainer, item, options)
            except Exception as exc:
                item.fail(exc)
    for item in items:
        if isinstance(item.outcome, Explanation):
            item.outcome.timings = {**item.seconds, "answer_tokens": float(len(item.tokens))}
    return [item.outcome for item in items]


@contextmanager
def timed(items: Sequence[Item], stage: str) -> Iterator[None]:
    """Add the block's seconds to `stage`, divided evenly over `items`."""
    started = time.perf_counter()
    try:
        yield
    finally:
        share = (time.perf_counter() - started) / max(1, len(items))
        for item in items:
            item.seconds[stage] += share


def groups(
    items: Sequence[Item],
    batch_size: int,
    length: Callable[[Item], int],
    fits: Callable[[list[Item]], bool],
) -> list[list[Item]]:
    """Items in groups of at most `batch_size`, by `length` (shortest first: the least padding), each
    group one that `fits` accepts (a group of one always does)."""
    grouped: list[list[Item]] = []
    for item in sorted(items, key=length):
        if grouped and len(grouped[-1]) < batch_size and fits([*grouped[-1], item]):
            grouped[-1].append(item)
        else:
            grouped.append([item])
    return grouped


def live(items: Sequence[Item]) -> list[Item]:
    """The items without an outcome yet."""
    return [item for item in items if item.outcome is None]


def _eager(group: Sequence[Item]) -> bool:
    """Whether every item runs on the eager path, the one that batches: the blockwise path masks with
    -inf, and a left pad's fully masked row would turn its values into NaN."""
    return all(item.path == "eager" for item in group)


def _prompt(explainer: Explainer, item: Item, options: ExplainOptions) -> None:
    """The item's prompt, attention path and, for a given answer, its token ids."""
    request, tokenizer = item.request, explainer.processor.tokenizer
    item.prompt = build_prompt(
        explainer.processor,
        item.images,
        request.question,
        options.system_prompt,
        max_question_tokens=options.max_question_tokens,
        image_labels=request.image_labels,
    )
    context_length = explainer.model.config.get_text_config().max_position_embeddings
    if item.prompt.length + options.max_new_tokens > context_length:
        raise ValueError(
            f"the prompt is {item.prompt.length:,} tokens ({len(item.images)} images) and the answer may "
            f"add {options.max_new_tokens}, beyond the model's context of {context_length:,} tokens; sample "
            "fewer slices per volume (slices_per_volume) or give fewer images per item"
        )
    item.path = explainer.attention_path(item.prompt.length + options.max_new_tokens, options.attention)
    if request.answer is not None:  # explained as given: the tokens the model is scored on
        check_question(tokenizer, request.answer)
        item.answer_ids = torch.tensor(
            tokenizer(request.answer, add_special_tokens=False)["input_ids"], dtype=torch.long
        )


def _generate(model: torch.nn.Module, group: list[Item], options: ExplainOptions) -> None:
    """Answers of a group of items, each generated on its attention path (the answer comes from the
    computation explained): one `generate` call for several (all eager), or, for one item or after
    a failed batch, one call per item."""
    arguments = {"max_new_tokens": options.max_new_tokens, "generation_kwargs": options.generation_kwargs}
    if len(group) > 1:
        try:
            with relevance_mode(model, group[0].path):
                answers = generation.generate_answers(model, [item.prompt for item in group], **arguments)
            for item, answer_ids in zip(group, answers, strict=True):
                item.answer_ids = answer_ids
            return
        except Exception:  # redone one item at a time: the failing item gets the error
            pass
    for item in group:
        try:
            with relevance_mode(model, item.path):
                item.answer_ids = generation.generate_answer(model, item.prompt, **arguments)
        except Exception as exc:
            item.fail_generation(exc)


def _sequence(explainer: Explainer, item: Item, targets: str | list[str]) -> None:
    """The item's answer tokens, its targets, the full sequence and its layout."""
    item.answer_text, item.tokens = answer_tokens(
        explainer.processor.tokenizer, item.answer_ids, item.prompt.length
    )
    item.targets = answer_targets(item.tokens, targets)
    item.inputs = full_sequence(item.prompt, item.answer_ids)
    item.layout = explainer.layout(item.inputs)


def _explanation(explainer: Explainer, item: Item, options: ExplainOptions) -> Explanation:
    layout, prompt, relevance = item.layout, item.prompt, item.relevance  # relevance [T, L]
    prompt_text_positions = layout.text_positions[layout.text_positions < prompt.length]
    strings, roles = prompt_roles(explainer.processor.tokenizer, prompt, prompt_text_positions)
    rows, cols = layout.grid
    labels = item.request.image_labels
    return Explanation(
        question=item.request.question,
        answer=item.answer_text,
        tokens=item.tokens,
        targets=item.targets,
        image_maps=[relevance[:, run].reshape(-1, rows, cols).numpy() for run in layout.image_token_runs],
        text_relevance=relevance[:, prompt_text_positions].numpy(),
        prompt_tokens=strings,
        prompt_token_roles=roles,
        images=item.images,
        method=options.method,
        model_id=explainer.info.model_id,
        model_revision=explainer.info.revision,
        system_prompt=options.system_prompt,
        image_labels=list(labels) if labels is not None else [None] * len(item.images),
    )
