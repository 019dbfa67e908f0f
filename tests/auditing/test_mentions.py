"""The answer reader (auditing.mentions): a golden set in MedGemma's styles, a held-out set in another
voice written after the rules were tuned, and each known trap with its exact expectation."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from auditing.mentions import read_mentions

HERE = Path(__file__).parent


def _score(path: Path) -> tuple[int, int, int, int]:
    """(expected mentions, right in finding+assertion, right in finding+assertion+side, spurious)."""
    expected_total = by_assertion = by_side = spurious = 0
    for line in path.read_text().splitlines():
        case = json.loads(line)
        parsed = read_mentions(case["answer"], case["question"])
        expected = [tuple(m) for m in case["mentions"]]
        got_assertion = Counter((m.finding, m.assertion) for m in parsed)
        want_assertion = Counter(m[:2] for m in expected)
        expected_total += len(expected)
        by_assertion += sum((got_assertion & want_assertion).values())
        by_side += sum(
            (Counter((m.finding, m.assertion, m.side) for m in parsed) & Counter(expected)).values()
        )
        spurious += sum((got_assertion - want_assertion).values())
    return expected_total, by_assertion, by_side, spurious


@pytest.mark.parametrize("name", ["mentions_golden.jsonl", "mentions_heldout.jsonl"])
def test_answers_are_read_right_in_at_least_95_percent_of_mentions(name):
    total, by_assertion, by_side, spurious = _score(HERE / name)
    print(
        f"{name}: {total} mentions; finding+assertion {by_assertion} ({by_assertion / total:.1%}), "
        f"+side {by_side} ({by_side / total:.1%}), spurious {spurious}"
    )
    if name == "mentions_golden.jsonl":  # the held-out set is reported, not gated: it must not be tuned on
        assert by_assertion >= 0.95 * total and by_side >= 0.95 * total and spurious <= 0.05 * total


def _read(answer: str, question: str | None = None) -> list[tuple[str, str, str | None]]:
    return [(m.finding, m.assertion, m.side) for m in read_mentions(answer, question)]


def test_opposite_assertions_and_sides_in_one_sentence():
    answer = "There is no obvious fracture on the right; however, a possible fracture on the left."
    assert _read(answer) == [("fracture", "absent", "right"), ("fracture", "uncertain", "left")]


def test_a_side_belongs_to_the_phrase_that_carries_it_not_to_a_comparison():
    assert _read("There is an opacity in the right lower zone, denser than the left.") == [
        ("opacity", "present", "right")
    ]
    assert _read("There is a nodule on the left, larger than the one on the right.") == [
        ("nodule", "present", "left")
    ]


@pytest.mark.parametrize(
    ("answer", "side"),
    [
        ("Left pleural effusion.", "left"),
        ("There is consolidation in the right upper lobe.", "right"),
        ("A right-sided pneumothorax is present.", "right"),
        ("There is a fracture on the left.", "left"),
        ("Bilateral pleural effusions.", "bilateral"),
        ("Patchy opacities in both lungs.", "bilateral"),
        ("Nodules in the right upper and left lower zones.", "bilateral"),
        ("In the left lower zone, there is an opacity.", "left"),
        ("A left-sided pacemaker with leads in the right atrium.", "left"),
    ],
)
def test_side_phrases(answer, side):
    assert [m.side for m in read_mentions(answer)] == [side]


def test_two_findings_keep_their_own_sides():
    answer = "There is a nodule in the right upper lobe and a mass in the left lower lobe."
    assert _read(answer) == [("nodule", "present", "right"), ("mass", "present", "left")]
    assert [m.zone for m in read_mentions(answer)] == ["upper lobe", "lower lobe"]


def test_semicolon_however_and_but_end_a_negation_and_a_phrase():
    assert _read("No effusion; a nodule on the left.") == [
        ("effusion", "absent", None),
        ("nodule", "present", "left"),
    ]
    assert _read("There is a left pneumothorax but no effusion.") == [
        ("pneumothorax", "present", "left"),
        ("effusion", "absent", None),
    ]


@pytest.mark.parametrize(
    ("answer", "assertion"),
    [
        ("There is a nodule.", "present"),
        ("No nodule.", "absent"),
        ("No evidence of a nodule.", "absent"),
        ("No obvious nodule.", "absent"),
        ("A nodule is not seen.", "absent"),
        ("The lungs are free of nodules.", "absent"),
        ("There is an opacity without a nodule.", "absent"),
        ("Possible nodule.", "uncertain"),
        ("A nodule cannot be excluded.", "uncertain"),
        ("It is difficult to determine whether a nodule is present.", "uncertain"),
        ("The opacity may represent a nodule.", "uncertain"),
        ("Findings suggestive of a nodule.", "uncertain"),
        ("A nodule is likely.", "uncertain"),
    ],
)
def test_negations_and_hedges(answer, assertion):
    assert [m.assertion for m in read_mentions(answer) if m.finding == "nodule"] == [assertion]


def test_markdown_and_disclaimers_are_ignored_and_spans_index_the_original_answer():
    answer = (
        "**Findings:**\n- Left pleural effusion.\n* No pneumothorax.\n\n**Impression:** Left effusion.\n\n"
        "This is not a substitute for professional medical advice; a pneumothorax should be ruled out by a doctor."
    )
    mentions = read_mentions(answer)
    assert [(m.finding, m.assertion, m.side) for m in mentions] == [
        ("effusion", "present", "left"),
        ("pneumothorax", "absent", None),
        ("effusion", "present", "left"),
    ]
    first = mentions[0]
    assert answer[slice(*first.finding_span)] == "pleural effusion"
    assert answer[slice(*first.side_span)] == "Left"
    assert answer[first.start : first.end] == "Left pleural effusion"
    assert first.sentence == "Left pleural effusion."
    assert [m.mention for m in mentions] == [0, 1, 2]


@pytest.mark.parametrize(
    ("question", "answer", "expected"),
    [
        ("Is there a nodule?", "Yes.", [("nodule", "present", None)]),
        ("Is there a nodule?", "no", [("nodule", "absent", None)]),
        ("Is there a nodule?", "No, the lungs are clear.", [("nodule", "absent", None)]),
        ("Is there a left pleural effusion?", "Yes", [("effusion", "present", "left")]),
        ("Where is the catheter?", "left lower zone", [("catheter", "present", "left")]),
        ("Where is the nodule?", "In the right upper zone.", [("nodule", "present", "right")]),
        ("Is there cardiomegaly?", "The heart size is normal.", [("cardiomegaly", "absent", None)]),
        (
            "Is there a nodule?",
            "Yes, there is a nodule in the left upper zone.",
            [("nodule", "present", "left")],
        ),
    ],
)
def test_replies_take_their_finding_from_the_question(question, answer, expected):
    assert _read(answer, question) == expected


def test_a_locate_reply_carries_the_answer_s_side_and_zone_spans():
    answer = "In the right upper zone."
    (mention,) = read_mentions(answer, "Where is the nodule?")
    assert mention.from_question and mention.finding_span is None
    assert answer[mention.start : mention.end] == "right upper zone"
    assert answer[slice(*mention.side_span)] == "right" and mention.zone == "upper zone"


def test_a_normal_statement_answers_only_the_question_s_finding():
    assert _read("The lungs are clear.") == []
    assert _read("The lungs are clear.", "Is there a pneumothorax?") == []


@pytest.mark.parametrize(
    "answer",
    [
        "Based on the chest X-ray provided, there is a small nodule in the right upper lobe. There is no pleural eff",
        "Based on the chest X-ray provided, there is a",
        "**Findings:**\n- Nodule in the left",
        "",
        "   ",
    ],
)
def test_answers_cut_off_at_the_token_limit_keep_the_mentions_before_the_cut(answer):
    mentions = read_mentions(answer, "Is there a nodule?")
    if "nodule in the right upper lobe" in answer:
        assert _read(answer) == [("nodule", "present", "right")]
    assert all(0 <= m.start < m.end <= len(answer) for m in mentions)


def test_words_that_only_look_like_findings_are_not_mentions():
    assert _read("No visceral pleural line is seen.") == []
