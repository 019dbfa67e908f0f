"""`read_mentions`: the findings a free-text answer names, each with its assertion, side and zone."""

from __future__ import annotations

from dataclasses import replace

from spacy.tokens import Doc, Span

from auditing.mentions._clean import clean
from auditing.mentions._location import Location, locate, location_words
from auditing.mentions._nlp import IGNORED, NORMAL, parse
from auditing.mentions._rules import rules
from auditing.mentions.mention import Assertion, CharSpan, Mention


def read_mentions(answer: str, question: str | None = None) -> list[Mention]:
    """Every finding mention of `answer`, in order; spans index `answer` itself.

    A bare or leading "yes"/"no", a normal statement ("The lungs are clear.") and a locate answer ("left
    lower zone") name no finding: they answer the question's, which they then carry (`from_question`).

    Example:
        >>> [(m.finding, m.assertion, m.side) for m in read_mentions(
        ...     "No obvious fracture on the right; however, a possible fracture on the left.")]
        [('fracture', 'absent', 'right'), ('fracture', 'uncertain', 'left')]
    """
    doc = parse(clean(answer))
    kept = [ent for ent in doc.ents if ent.label_ != IGNORED and not _is_disclaimer(ent.sent)]
    findings = [ent for ent in kept if ent.label_ != NORMAL]
    locations = locate(doc, findings)
    mentions = [
        _mention(answer, ent, _assertion(ent), locations.get(ent.start, Location())) for ent in findings
    ]
    asked = _asked(parse(question)) if question else None
    if asked is not None and all(m.finding != asked[0].label_ for m in mentions):
        reply = _reply(answer, doc, [ent for ent in kept if ent.label_ == NORMAL], question, *asked)
        mentions += [reply] if reply else []
    mentions.sort(key=lambda m: m.start)
    return [_numbered(m, index) for index, m in enumerate(mentions)]


def _is_disclaimer(sentence: Span) -> bool:
    text = sentence.text.lower()
    return any(cue in text for cue in rules().disclaimers)


def _assertion(ent: Span) -> Assertion:
    if (
        ent._.is_uncertain or ent._.is_hypothetical
    ):  # a hedged negation ("no definite ... likely") stays hedged
        return "uncertain"
    return "absent" if ent._.is_negated else "present"


def _chars(span: Span | None) -> CharSpan | None:
    return None if span is None else (span.start_char, span.end_char)


def _sentence(answer: str, sentence: Span) -> str:
    """The sentence's text in the original answer, without the blanked markup around it."""
    text = sentence.doc.text[sentence.start_char : sentence.end_char]
    start = sentence.start_char + len(text) - len(text.lstrip())
    end = sentence.end_char - (len(text) - len(text.rstrip()))
    return answer[start:end]


def _mention(answer: str, ent: Span, assertion: Assertion, where: Location) -> Mention:
    words = [span for span in (ent, where.side_words, where.zone_words) if span is not None]
    return Mention(
        mention=0,
        finding=ent.label_,
        assertion=assertion,
        side=where.side,
        zone=where.zone,
        sentence=_sentence(answer, ent.sent),
        start=min(span.start_char for span in words),
        end=max(span.end_char for span in words),
        finding_span=_chars(ent),
        side_span=_chars(where.side_words),
        zone_span=_chars(where.zone_words),
    )


def _asked(question: Doc) -> tuple[Span, Location] | None:
    """The question's first finding and where the question places it ("Is there a left effusion?")."""
    findings = [ent for ent in question.ents if ent.label_ not in (NORMAL, IGNORED)]
    if not findings:
        return None
    return findings[0], locate(question, findings).get(findings[0].start, Location())


def _reply(
    answer: str, doc: Doc, normals: list[Span], question: str, asked: Span, where: Location
) -> Mention | None:
    """The question's finding as the answer asserts it without naming it, or None where it does not."""
    finding = asked.label_
    covering = [ent for ent in normals if finding in ent._.target_rule.metadata["covers"]]
    if covering:  # "Is there a nodule?" "The lungs are clear."
        return _from_question(answer, covering[0], finding, "absent", Location())
    words = [token for token in doc if not (token.is_space or token.is_punct)]
    if words and words[0].lower_ in rules().yes:
        return _from_question(answer, doc[words[0].i : words[0].i + 1], finding, "present", where)
    if words and words[0].lower_ in rules().no and _stands_alone(doc, words[0].i):
        return _from_question(answer, doc[words[0].i : words[0].i + 1], finding, "absent", where)
    if question.strip().lower().startswith(rules().locate_questions):
        return _located(answer, doc, finding)
    return None


def _stands_alone(doc: Doc, index: int) -> bool:
    """A reply "no" ("No.", "No, ...") rather than the negation of what follows ("No pneumothorax")."""
    return index + 1 == len(doc) or doc[index + 1].is_punct or doc[index + 1].is_space


def _located(answer: str, doc: Doc, finding: str) -> Mention | None:
    """A locate answer ("In the right upper zone."): the first sentence naming a side or zone places it."""
    words = location_words(doc)
    if not words:
        return None
    sentence_words = [w for w in words if w.sent == words[0].sent]
    sides = [w for w in sentence_words if w.label_.startswith("side:")]
    zones = [w for w in sentence_words if w.label_.startswith("zone:")]
    side_names = {w.label_.removeprefix("side:") for w in sides}
    side = "bilateral" if "bilateral" in side_names or {"right", "left"} <= side_names else None
    where = Location(
        side=side or (sides[0].label_.removeprefix("side:") if sides else None),
        side_words=sides[0] if sides else None,
        zone=zones[0].label_.removeprefix("zone:") if zones else None,
        zone_words=zones[0] if zones else None,
    )
    phrase = doc[sentence_words[0].start : sentence_words[-1].end]
    return _from_question(answer, phrase, finding, "present", where)


def _from_question(answer: str, words: Span, finding: str, assertion: Assertion, where: Location) -> Mention:
    in_answer = where.side_words is not None and where.side_words.doc is words.doc
    zone_in_answer = where.zone_words is not None and where.zone_words.doc is words.doc
    return Mention(
        mention=0,
        finding=finding,
        assertion=assertion,
        side=where.side,
        zone=where.zone,
        sentence=_sentence(answer, words.sent),
        start=words.start_char,
        end=words.end_char,
        finding_span=None,
        side_span=_chars(where.side_words) if in_answer else None,
        zone_span=_chars(where.zone_words) if zone_in_answer else None,
        from_question=True,
    )


def _numbered(mention: Mention, index: int) -> Mention:
    return replace(mention, mention=index)
