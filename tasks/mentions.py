"""Records of the mentions table: the findings an answer names, tied to the answer tokens that name them.

A mention's finding and side words are character spans of the answer (`auditing.mentions`); the
tokens are tied to them through their own character spans (`AnswerToken.span`), so a word split into
several tokens, or a token carrying a leading space, is found whatever the tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence

from auditing.mentions import Mention, read_mentions
from explainer.explanation import AnswerToken, Explanation
from storage import MentionRecord

CharSpan = tuple[int, int]  # [start, end) characters of the answer


def span_positions(answer: str, tokens: Sequence[AnswerToken], span: CharSpan | None) -> list[int]:
    """Sequence positions of the tokens whose characters overlap `span` on more than whitespace (a
    token " nodule" belongs to "nodule"; a lone space token between two words belongs to neither).

    >>> span_positions("no nodule", [AnswerToken(1, "no", 9, "no", (0, 2)),
    ...                              AnswerToken(2, " nodule", 10, "nodule", (2, 9))], (3, 9))
    [10]
    """
    if span is None:
        return []
    start, end = span
    return [
        token.position
        for token in tokens
        if token.span is not None and answer[max(token.span[0], start) : min(token.span[1], end)].strip()
    ]


def mention_records(
    item_id: str, explanation: Explanation, mentions: Sequence[Mention]
) -> list[MentionRecord]:
    """One mentions record per mention of the explanation's answer."""
    answer, tokens = explanation.answer, explanation.tokens
    return [
        MentionRecord(
            item_id=item_id,
            mention=mention.mention,
            finding=mention.finding,
            assertion=mention.assertion,
            side=mention.side,
            zone=mention.zone,
            sentence=mention.sentence,
            start=mention.start,
            end=mention.end,
            finding_positions=span_positions(answer, tokens, mention.finding_span),
            side_positions=span_positions(answer, tokens, mention.side_span),
            from_question=mention.from_question,
        )
        for mention in mentions
    ]


def read_item_mentions(item_id: str, explanation: Explanation) -> list[MentionRecord]:
    """The mentions records of an explained answer, read with its question (which names the finding of
    a bare "yes" or a locate answer)."""
    return mention_records(item_id, explanation, read_mentions(explanation.answer, explanation.question))
