"""Which words of the question mattered: the prompt tokens' relevance for the whole answer, as words.

The tokens table stores, per target, `text_relevance` aligned with the item's `answers.prompt_tokens`
(the tokenizer's pieces, `prompt_token_special` true for chat-template and special tokens). A word is
a run of pieces up to the next piece that starts with a space marker; its relevance is the sum of its
pieces' positive relevance. Only the question's words are shown: template tokens and a system prompt
are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from storage import ObjectStore, read_table
from vocabulary.names import ANSWER

SPACE_MARKERS = ("▁", "Ġ")  # SentencePiece's and byte-level BPE's word-start markers
TOP_WORDS = 3


@dataclass(frozen=True)
class Word:
    """One question word, its relevance for the answer (positive part, summed over its pieces) and
    its shade: relevance over the question's most relevant word (0 to 1)."""

    text: str
    relevance: float
    shade: float

    @property
    def alpha(self) -> str:
        """The background's opacity: the shade, at most 0.7 so that dark text stays readable on it."""
        return f"{0.7 * self.shade:.2f}"


def _piece_text(piece: str) -> str:
    for marker in SPACE_MARKERS:
        piece = piece.replace(marker, " ")
    return piece.replace("Ċ", "\n")


def question_words(
    pieces: Sequence[str], special: Sequence[bool], relevance: Sequence[float], question: str | None
) -> list[Word]:
    """The question's words with their relevance, in order; [] when the lengths disagree.

    >>> [(w.text, w.shade) for w in question_words(["<bos>", "Is", "▁it"], [True, False, False], [9, 1, 2], "Is it")]
    [('Is', 0.5), ('it', 1.0)]
    """
    if not len(pieces) == len(special) == len(relevance):
        return []
    kept = [
        (_piece_text(p), max(float(r), 0.0))
        for p, s, r in zip(pieces, special, relevance, strict=True)
        if not s
    ]
    text = "".join(piece for piece, _ in kept)
    start = text.rfind(question.strip()) if question and question.strip() else -1
    span = (start, start + len(question.strip())) if start >= 0 else (0, len(text))
    words: list[tuple[str, float]] = []
    offset = 0
    for piece, weight in kept:
        begins, offset = offset, offset + len(piece)
        if offset <= span[0] or begins >= span[1]:  # outside the question: a system prompt
            continue
        if not words or piece[:1].isspace():
            words.append((piece.strip(), weight))
        else:
            words[-1] = (words[-1][0] + piece.strip(), words[-1][1] + weight)
    words = [(word, weight) for word, weight in words if word]
    top = max((weight for _, weight in words), default=0.0)
    return [Word(word, weight, weight / top if top > 0 else 0.0) for word, weight in words]


def top_words(words: list[Word], n: int = TOP_WORDS) -> list[tuple[str, str]]:
    """The n most relevant words with their share of the question's relevance: [('nodule', '55%'), ...]."""
    total = sum(word.relevance for word in words)
    ranked = sorted((word for word in words if word.relevance > 0), key=lambda word: -word.relevance)[:n]
    return [(word.text, f"{word.relevance / total:.0%}") for word in ranked]


def answer_text_relevance(store: ObjectStore, run_id: str, item_ids: list[str]) -> dict[str, np.ndarray]:
    """Per item, the prompt tokens' relevance for the whole answer (its first image's row; every image
    row of a target carries the same text relevance). Reads only these items' answer rows."""
    if not item_ids:
        return {}
    rows = read_table(
        store,
        "tokens",
        run_id,
        columns=["item_id", "image_index", "text_relevance"],
        where=(ds.field("target_kind") == ANSWER) & ds.field("item_id").isin(item_ids),
    ).to_pandas()
    rows = rows.sort_values(["item_id", "image_index"]).drop_duplicates("item_id")
    return {row.item_id: np.asarray(row.text_relevance, dtype=np.float32) for row in rows.itertuples()}


def item_question(row: pd.Series, relevance: np.ndarray | None) -> dict[str, object] | None:
    """The gallery card's shaded question and top words, or None without prompt tokens or relevance."""
    pieces, special = row.get("prompt_tokens"), row.get("prompt_token_special")
    if relevance is None or pieces is None or special is None:
        return None
    words = question_words(list(pieces), list(special), relevance, row.get("question"))
    if not any(word.relevance > 0 for word in words):
        return None
    return {"words": words, "top": top_words(words)}
