"""The medspaCy pipeline that reads answers: built once, on first use, from the rules files.

A blank spaCy `en` pipeline with medspaCy's tokenizer, its PyRuSH sentence splitter (rule-based), the
target matcher (findings and normal statements) and ConText with OUR rules only (rules/context.json):
nothing downloads. Importing medspaCy takes seconds, so `auditing` imports this module's users lazily.
"""

from __future__ import annotations

import warnings
from functools import cache
from typing import TYPE_CHECKING

from auditing.mentions._rules import CONTEXT_RULES, rules

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc

NORMAL = "NORMAL"  # the label of a normal statement's span; findings carry their canonical name
IGNORED = "IGNORED"  # "pleural line": matched so that the longer phrase hides the finding word inside it


@cache
def pipeline() -> Language:
    import medspacy
    from loguru import logger
    from medspacy.target_matcher import TargetRule

    logger.disable("PyRuSH")  # PyRuSH logs every token at DEBUG level through loguru
    nlp = medspacy.load(
        medspacy_enable=["medspacy_tokenizer", "medspacy_pyrush", "medspacy_target_matcher"], load_rules=False
    )
    nlp.add_pipe("medspacy_context", config={"rules": str(CONTEXT_RULES)})
    target_rules = [
        TargetRule(phrase, finding) for finding, phrases in rules().findings.items() for phrase in phrases
    ]
    target_rules += [
        TargetRule(phrase, NORMAL, metadata={"covers": statement.covers})
        for statement in rules().normal
        for phrase in statement.phrases
    ]
    target_rules += [TargetRule(phrase, IGNORED) for phrase in rules().ignored]
    nlp.get_pipe("medspacy_target_matcher").add(target_rules)
    return nlp


def parse(text: str) -> Doc:
    """The text through the pipeline."""
    with warnings.catch_warnings():
        # W036: the target matcher's token-pattern matcher is empty (our rules are all phrases): harmless
        warnings.filterwarnings("ignore", message=r"\[W036\]")
        return pipeline()(text)
