"""The radiology rules, read once from the JSON files in `rules/` (data, not code: edit them there)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

RULES_DIR = Path(str(resources.files("auditing.mentions") / "rules"))
CONTEXT_RULES = RULES_DIR / "context.json"  # medspaCy's own ConText rule format


@dataclass(frozen=True)
class NormalStatement:
    """A phrase that says a region is normal, and the findings it rules out when the question asks one."""

    phrases: tuple[str, ...]
    covers: frozenset[str]


@dataclass(frozen=True)
class Rules:
    findings: dict[str, tuple[str, ...]]  # canonical name -> phrases naming it
    ignored: tuple[str, ...]  # phrases that look like a finding and are none ("pleural line")
    sides: dict[str, tuple[str, ...]]
    zones: dict[str, tuple[str, ...]]
    comparisons: frozenset[str]  # a side word after these compares; it does not locate
    modifiers: frozenset[str]  # words allowed between a side word and the finding it pre-modifies
    phrase_breaks: frozenset[str]  # words that end a finding's phrase (";", "but", "however", ...)
    coordinators: frozenset[str]  # "nodules or masses in the left lung": both are left
    headers: tuple[str, ...]
    disclaimers: tuple[str, ...]
    normal: tuple[NormalStatement, ...]
    yes: frozenset[str]
    no: frozenset[str]
    locate_questions: tuple[str, ...]


def _load(name: str) -> dict:
    return json.loads((RULES_DIR / name).read_text())


@cache
def rules() -> Rules:
    findings, locations, answers = _load("findings.json"), _load("locations.json"), _load("answers.json")
    known = {name for name in findings if not name.startswith("_")}
    normal = tuple(
        NormalStatement(tuple(entry["phrases"]), frozenset(entry["covers"])) for entry in answers["normal"]
    )
    for statement in normal:
        if unknown := statement.covers - known:
            raise ValueError(
                f"answers.json: normal statement covers unknown findings {sorted(unknown)}; "
                f"use names from findings.json: {sorted(known)}"
            )
    return Rules(
        findings={name: tuple(findings[name]["phrases"]) for name in sorted(known)},
        ignored=tuple(findings["_ignore"]),
        sides={side: tuple(words) for side, words in locations["sides"].items()},
        zones={zone: tuple(words) for zone, words in locations["zones"].items()},
        comparisons=frozenset(locations["comparisons"]),
        modifiers=frozenset(locations["modifiers"]),
        phrase_breaks=frozenset(locations["phrase_breaks"]),
        coordinators=frozenset(locations["coordinators"]),
        headers=tuple(answers["headers"]),
        disclaimers=tuple(answers["disclaimers"]),
        normal=normal,
        yes=frozenset(answers["yes"]),
        no=frozenset(answers["no"]),
        locate_questions=tuple(answers["locate_questions"]),
    )
