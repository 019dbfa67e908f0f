"""Markdown, bullets and section headers blanked out of an answer, every character kept in place.

Blanking (not deleting) keeps the cleaned text exactly as long as the answer, so every span found in it
indexes the original answer string too: no offset map to keep in step.
"""

from __future__ import annotations

import re
from functools import cache

from auditing.mentions._rules import rules

_BULLET = re.compile(r"(?m)^[ \t]*(?:[-*•+]|\d{1,2}[.)])[ \t]+")
_MARKUP = re.compile(r"\*+|#+|`+|__+|^>+", re.MULTILINE)


@cache
def _header() -> re.Pattern[str]:
    labels = "|".join(re.escape(label) for label in sorted(rules().headers, key=len, reverse=True))
    # "**Findings:**", "**Impression**:", "### Findings", or "Findings:" opening a line
    return re.compile(
        rf"\*\*\s*(?:{labels})\s*:?\s*\*\*\s*:?|(?m:^[ \t]*#+[ \t]*(?:{labels})\b[ \t]*:?)|(?m:^[ \t]*(?:{labels})[ \t]*:)",
        re.IGNORECASE,
    )


def _blank(text: str, match: re.Match[str], first: str = " ") -> str:
    start, end = match.span()
    return text[:start] + (first + " " * (end - start - 1) if end > start else "") + text[end:]


def clean(answer: str) -> str:
    """The answer with headers, bullets and markup replaced by spaces; a header becomes a line break first,
    so "effusion **Impression:** no pneumothorax" reads as two sentences. Same length as `answer`."""
    text = answer
    for match in _header().finditer(answer):
        text = _blank(text, match, first="\n")
    for pattern in (_BULLET, _MARKUP):
        for match in pattern.finditer(text):
            text = _blank(text, match)
    return text
