"""Aligning tokens with the words and roles they belong to, from decoded character spans."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from explainer.explanation import AnswerToken
from explainer.generation import Prompt

WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Word:
    text: str
    start: int
    end: int
    token_indices: tuple[int, ...]


def token_char_spans(tokenizer, token_ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decoded text of `token_ids` and each token's [start, end) span in it.

    Spans come from decoding growing prefixes, which respects SentencePiece-style leading spaces
    and byte fallback (where a prefix is not a prefix of the longer decode, the common part counts).
    """
    spans = []
    previous = ""
    for count in range(1, len(token_ids) + 1):
        text = tokenizer.decode(
            list(token_ids[:count]), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        common = len(previous) if text.startswith(previous) else _common_prefix(previous, text)
        spans.append((common, len(text)))
        previous = text
    return previous, spans


def _common_prefix(a: str, b: str) -> int:
    length = 0
    for char_a, char_b in zip(a, b, strict=False):
        if char_a != char_b:
            break
        length += 1
    return length


def words_of(text: str, spans: Sequence[tuple[int, int]]) -> list[Word]:
    """Words of `text` with the indices of the tokens whose spans overlap them."""
    words = []
    for match in WORD.finditer(text):
        indices = tuple(
            index for index, (start, end) in enumerate(spans) if start < match.end() and end > match.start()
        )
        words.append(Word(match.group(), match.start(), match.end(), indices))
    return words


def span_roles(
    spans: Sequence[tuple[int, int]], regions: dict[str, tuple[int, int]], default: str
) -> list[str]:
    """Role of every token: the name of the first character region it overlaps, else `default`."""
    roles = []
    for start, end in spans:
        role = default
        for name, (region_start, region_end) in regions.items():
            if start < region_end and end > region_start:
                role = name
                break
        roles.append(role)
    return roles


def answer_tokens(tokenizer, answer_ids: torch.Tensor, prompt_length: int) -> tuple[str, list[AnswerToken]]:
    """The decoded answer, outer whitespace stripped, and its tokens, each with its position in the full
    sequence, its word and its character span in that stripped answer (what mentions are read from)."""
    decoded, spans = token_char_spans(tokenizer, answer_ids.tolist())
    token_words: list[str | None] = [None] * len(spans)
    for word in words_of(decoded, spans):
        for index in word.token_indices:
            token_words[index] = token_words[index] or word.text
    answer = decoded.strip()
    lead = len(decoded) - len(decoded.lstrip())
    tokens = [
        AnswerToken(
            int(token_id),
            decoded[start:end],
            prompt_length + index,
            token_words[index],
            (_clip(start - lead, len(answer)), _clip(end - lead, len(answer))),
        )
        for index, (token_id, (start, end)) in enumerate(zip(answer_ids.tolist(), spans, strict=True))
    ]
    return answer, tokens


def _clip(offset: int, length: int) -> int:
    return min(max(offset, 0), length)


def prompt_roles(tokenizer, prompt: Prompt, text_positions: torch.Tensor) -> tuple[list[str], list[str]]:
    """Token strings and roles ("question", "system", "template", "special") of the prompt's text tokens."""
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
