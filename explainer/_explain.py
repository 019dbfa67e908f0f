"""The high-level flow behind `Explainer.explain`: generate, align words, explain all targets at once."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from PIL import Image

from explainer._sequence import sequence_layout
from explainer.explanation import AnswerToken, Explanation
from explainer.generation import Prompt, build_prompt, full_sequence, generate_answer
from explainer.targets import Target
from explainer.words import span_roles, token_char_spans, words_of


def answer_targets(tokens: list[AnswerToken], words: list[str | None], policy) -> list[Target]:
    """Targets for a policy: "all" (every token, every word, the answer), "answer", or a list of words."""
    if not tokens:
        return []
    targets = []
    if policy == "all":
        targets += [Target((token.position,), "token", token.text) for token in tokens]
        wanted = None
    elif policy == "answer":
        wanted = set()
    elif isinstance(policy, (list, tuple, set)):
        wanted = {word.lower() for word in policy}
    else:
        raise ValueError(f"targets must be 'all', 'answer' or a list of words; got {policy!r}")
    seen: dict[str, list[int]] = {}
    for token, word in zip(tokens, words, strict=True):
        if word is not None and (wanted is None or word.lower() in wanted):
            seen.setdefault(word.lower(), []).append(token.position)
    targets += [Target(tuple(positions), "word", word) for word, positions in seen.items()]
    targets.append(Target(tuple(token.position for token in tokens), "answer", "answer"))
    return targets


def prompt_roles(processor, prompt: Prompt, text_positions: torch.Tensor) -> tuple[list[str], list[str]]:
    """Token strings and roles ("question", "system", "template", "special") of the prompt's text tokens."""
    tokenizer = processor.tokenizer
    ids = prompt.inputs["input_ids"][0].tolist()
    text, spans = token_char_spans(tokenizer, ids)
    regions = {}
    question_start = text.rfind(prompt.question.strip())
    if question_start >= 0:
        regions["question"] = (question_start, question_start + len(prompt.question.strip()))
    if prompt.system_prompt and (system_start := text.find(prompt.system_prompt.strip())) >= 0:
        regions["system"] = (system_start, system_start + len(prompt.system_prompt.strip()))
    roles = span_roles(spans, regions, default="template")
    special = set(tokenizer.all_special_ids)
    positions = [p for p in text_positions.tolist() if p < len(ids)]
    strings = tokenizer.convert_ids_to_tokens([ids[p] for p in positions])
    return strings, ["special" if ids[p] in special else roles[p] for p in positions]


def explain(
    explainer,
    images: Image.Image | Sequence[Image.Image],
    question: str,
    *,
    max_new_tokens: int,
    targets,
    method: str,
    system_prompt: str | None,
    generation_kwargs: dict | None,
) -> Explanation:
    if explainer.processor is None:
        raise ValueError(
            "explain() needs a processor: Explainer(model, processor) or Explainer.from_pretrained"
        )
    images = [images] if isinstance(images, Image.Image) else list(images)
    started = time.perf_counter()
    prompt = build_prompt(explainer.processor, images, question, system_prompt)
    answer_ids = generate_answer(
        explainer.model, prompt, max_new_tokens=max_new_tokens, generation_kwargs=generation_kwargs
    )
    generated = time.perf_counter()

    answer_text, spans = token_char_spans(explainer.processor.tokenizer, answer_ids.tolist())
    token_words: list[str | None] = [None] * len(spans)
    for word in words_of(answer_text, spans):
        for index in word.token_indices:
            token_words[index] = token_words[index] or word.text
    tokens = [
        AnswerToken(int(token_id), answer_text[start:end], prompt.length + index, token_words[index])
        for index, (token_id, (start, end)) in enumerate(zip(answer_ids.tolist(), spans, strict=True))
    ]
    explained_targets = answer_targets(tokens, token_words, targets)

    inputs = full_sequence(prompt, answer_ids)
    layout = sequence_layout(inputs["input_ids"], explainer.model.config)
    relevance = _unique_relevance(explainer, inputs, explained_targets, method, layout.seq_len)
    prompt_text_positions = layout.text_positions[layout.text_positions < prompt.length]
    strings, roles = prompt_roles(explainer.processor, prompt, prompt_text_positions)
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
        model_id=explainer.info.model_id,
        model_revision=explainer.info.revision,
        system_prompt=system_prompt,
        timings={
            "generate_seconds": generated - started,
            "explain_seconds": time.perf_counter() - generated,
            "answer_tokens": float(len(tokens)),
        },
    )


def _unique_relevance(explainer, inputs, targets: list[Target], method: str, seq_len: int) -> torch.Tensor:
    """[T, L] relevance, computing each distinct set of positions once (a one-token word = its token)."""
    if not targets:
        return torch.zeros(0, seq_len)
    unique: dict[tuple[int, ...], int] = {}
    for target in targets:
        unique.setdefault(target.positions, len(unique))
    distinct = [Target(positions) for positions in unique]
    rows = explainer.relevance_for_targets(inputs, distinct, method)
    return rows[[unique[target.positions] for target in targets]].float()


__all__ = ["answer_targets", "explain"]
