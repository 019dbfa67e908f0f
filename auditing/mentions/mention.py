"""One finding mention of a free-text answer: what it names, how it is asserted, on which side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vocabulary import names

# the types spell out vocabulary.names' values (a Literal cannot be built from a tuple); a test checks
Assertion = Literal["present", "absent", "uncertain"]
Side = Literal["right", "left", "bilateral"]
CharSpan = tuple[int, int]  # [start, end) characters of the ORIGINAL answer string

ASSERTIONS: tuple[Assertion, ...] = names.ASSERTIONS
SIDES: tuple[Side, ...] = names.SIDES


@dataclass(frozen=True)
class Mention:
    """A finding the answer names (or, for a bare "yes"/"no" or a locate answer, the question's finding).

    `start`/`end` cover the mention's phrase (the finding words with the side and zone words it owns);
    `finding_span` the finding words, None when the finding comes from the question; `side_span` and
    `zone_span` the words naming side and zone, None where the answer names none (a side taken from the
    question has no span). Spans index the original answer, markdown included.
    """

    mention: int  # order in the answer, from 0
    finding: str  # canonical name (auditing/mentions/rules/findings.json)
    assertion: Assertion
    side: Side | None
    zone: str | None  # "upper zone", "lower lobe", "lingula", ... (rules/locations.json)
    sentence: str
    start: int
    end: int
    finding_span: CharSpan | None
    side_span: CharSpan | None
    zone_span: CharSpan | None
    from_question: bool = False  # the answer ("yes", "left lower zone") names no finding; the question does
