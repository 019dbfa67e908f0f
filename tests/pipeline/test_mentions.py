"""Mentions rows: mention spans tied to answer tokens by their character spans (toy answers, no model)."""

from __future__ import annotations

from typing import get_args

from auditing.mentions import ASSERTIONS, SIDES, Assertion, Side
from explainer.explanation import AnswerToken
from storage import to_arrow
from tasks.mentions import mention_records, span_positions
from tests.pipeline.test_records import _explanation


def _tokens(answer: str, pieces: list[str], first_position: int = 20) -> list[AnswerToken]:
    """Tokens spelling `answer` piece by piece (SentencePiece style: a leading space on the piece)."""
    tokens, start = [], 0
    for index, piece in enumerate(pieces):
        end = start + len(piece)
        assert answer[start:end] == piece
        tokens.append(AnswerToken(index, piece, first_position + index, None, (start, end)))
        start = end
    return tokens


def test_a_span_takes_the_tokens_that_share_a_non_space_character_with_it():
    answer = "a nodule in the right upper zone"
    tokens = _tokens(answer, ["a", " nod", "ule", " in", " the", " ", "right", " upper", " zone"])
    assert span_positions(answer, tokens, (2, 8)) == [21, 22]  # "nodule": both of its pieces
    assert span_positions(answer, tokens, (16, 21)) == [26]  # "right": not the lone space before it
    assert span_positions(answer, tokens, (16, 32)) == [26, 27, 28]
    assert span_positions(answer, tokens, None) == []  # a finding taken from the question
    unknown = [AnswerToken(1, "a", 20, "a")]  # a token without a span belongs to no word
    assert span_positions("a", unknown, (0, 1)) == []


def test_mention_rows_fit_the_schema_and_point_at_their_tokens():
    from auditing.mentions import read_mentions

    answer = "no nodule on the left"
    explanation = _explanation()
    explanation.answer = answer
    explanation.tokens = _tokens(answer, ["no", " nodule", " on", " the", " left"])
    rows = mention_records("a1", explanation, read_mentions(answer, "Is there a nodule?"))
    to_arrow("mentions", rows)  # raises SchemaError on any column mismatch
    [row] = rows
    assert (row.finding, row.assertion, row.side) == ("nodule", "absent", "left")
    assert row.finding_positions == [21] and row.side_positions == [24] and not row.from_question


def test_the_mention_types_spell_the_vocabulary_names():
    assert get_args(Assertion) == ASSERTIONS and get_args(Side) == SIDES
