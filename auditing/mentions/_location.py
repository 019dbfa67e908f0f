"""Which finding a side or zone word belongs to: the finding whose phrase carries it.

Within a clause (a sentence cut at the phrase breaks of rules/locations.json: ";", "but", "however",
...), a side or zone word belongs to, in this order of preference,
1. the finding right after it, when only noun-phrase modifiers stand between ("left lower lobe
   consolidation", "right-sided pleural effusion");
2. else the nearest finding before it ("nodule in the right upper lobe", "fracture on the left");
3. else the next finding ("In the right lower zone, there is an opacity").
A finding that owns several side words takes the most preferred, nearest one ("left-sided pacemaker with
leads in the right atrium" is left); "right ... and left ..." joined by "and" is bilateral. A side word
after a comparison ("denser than the left") locates nothing. A finding without location words shares
those after the finding it is listed with ("no nodules or masses in the left lung").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from itertools import pairwise

from spacy.matcher import PhraseMatcher
from spacy.tokens import Doc, Span
from spacy.util import filter_spans

from auditing.mentions._nlp import pipeline
from auditing.mentions._rules import rules

_COMPARISON_REACH = 5  # tokens before a side word searched for "than", "compared", ...
_MODIFIER_REACH = 4  # most modifier tokens between a side word and the finding it pre-modifies


@dataclass(frozen=True)
class Location:
    """What one finding's phrase says about where it is; spans are token spans of the doc."""

    side: str | None = None
    side_words: Span | None = None
    zone: str | None = None
    zone_words: Span | None = None


@dataclass(frozen=True)
class _Claim:
    """A location word's claim on a finding: lower `rank` (rule 1, 2, 3) and `distance` win."""

    word: Span
    rank: int
    distance: int


@cache
def _matcher() -> PhraseMatcher:
    nlp = pipeline()
    matcher = PhraseMatcher(nlp.vocab, attr="LOWER")
    for kind, table in (("side", rules().sides), ("zone", rules().zones)):
        for name, phrases in table.items():
            matcher.add(f"{kind}:{name}", [nlp.make_doc(phrase) for phrase in phrases])
    return matcher


def location_words(doc: Doc) -> list[Span]:
    """Side and zone phrases in the doc, longest first where they overlap; label "side:right", "zone:..."."""
    spans = [Span(doc, start, end, label=match_id) for match_id, start, end in _matcher()(doc)]
    return sorted(filter_spans(spans), key=lambda span: span.start)


def _clause(doc: Doc, position: int) -> tuple[int, int]:
    """The token range of the clause holding `position`: its sentence, cut at phrase breaks."""
    sentence = doc[position].sent
    breaks = [t.i for t in sentence if t.lower_ in rules().phrase_breaks]
    start = max((b for b in breaks if b <= position), default=sentence.start)
    end = min((b for b in breaks if b > position), default=sentence.end)
    return start, end


def _is_comparison(doc: Doc, word: Span, clause_start: int) -> bool:
    before = doc[max(clause_start, word.start - _COMPARISON_REACH) : word.start]
    return any(token.lower_ in rules().comparisons for token in before)


def _premodifies(doc: Doc, word: Span, finding: Span) -> bool:
    between = doc[word.end : finding.start]
    return len(between) <= _MODIFIER_REACH and all(t.lower_ in rules().modifiers for t in between)


def _claim(doc: Doc, word: Span, findings: list[Span]) -> tuple[Span, _Claim] | None:
    start, end = _clause(doc, word.start)
    if _is_comparison(doc, word, start):
        return None
    in_clause = [f for f in findings if start <= f.start < end]
    after = [f for f in in_clause if f.start >= word.end]
    before = [f for f in in_clause if f.end <= word.start]
    if after and _premodifies(doc, word, after[0]):
        return after[0], _Claim(word, 1, after[0].start - word.end)
    if before:
        return before[-1], _Claim(word, 2, word.start - before[-1].end)
    return (after[0], _Claim(word, 3, after[0].start - word.end)) if after else None


def locate(doc: Doc, findings: list[Span]) -> dict[int, Location]:
    """The side and zone of each finding (keyed by its start token) from the words its phrase carries."""
    claims: dict[int, list[_Claim]] = {}
    for word in location_words(doc):
        if (owned := _claim(doc, word, findings)) is not None:
            claims.setdefault(owned[0].start, []).append(owned[1])
    located = {start: _summarise(doc, found) for start, found in claims.items()}
    for listed, neighbour in pairwise(findings):
        between = doc[listed.end : neighbour.start]
        shared = claims.get(neighbour.start, [])  # only words after the list: "... in the left lung"
        listed_together = all(t.lower_ in rules().coordinators for t in between)
        if listed.start not in located and listed_together and shared and all(c.rank == 2 for c in shared):
            located[listed.start] = located[neighbour.start]
    return located


def _joined(doc: Doc, first: Span, second: Span) -> bool:
    """ "right upper and left lower zones": two sides of one phrase, joined by "and"."""
    between = doc[first.end : second.start]
    return any(t.lower_ == "and" for t in between) and all(
        t.lower_ in rules().modifiers or t.lower_ == "and" for t in between
    )


def _summarise(doc: Doc, claims: list[_Claim]) -> Location:
    claims = sorted(claims, key=lambda c: (c.rank, c.distance))
    sides = [c.word for c in claims if c.word.label_.startswith("side:")]
    zones = [c.word for c in claims if c.word.label_.startswith("zone:")]
    side = sides[0].label_.removeprefix("side:") if sides else None
    if any(w.label_ == "side:bilateral" for w in sides):
        side = "bilateral"
    elif len({w.label_ for w in sides}) > 1:
        ordered = sorted(sides, key=lambda w: w.start)
        if any(_joined(doc, a, b) for a, b in pairwise(ordered) if a.label_ != b.label_):
            side = "bilateral"
    side_words = next((w for w in sides if w.label_ == f"side:{side}"), sides[0] if sides else None)
    return Location(
        side=side,
        side_words=side_words,
        zone=zones[0].label_.removeprefix("zone:") if zones else None,
        zone_words=zones[0] if zones else None,
    )
