"""Free-text answers read as a radiologist reads them: which findings, present, absent or uncertain, on
which side and in which zone (medspaCy's target matcher and ConText over the rules in `rules/`)."""

from auditing.mentions.mention import ASSERTIONS, SIDES, Assertion, Mention, Side
from auditing.mentions.reader import read_mentions

__all__ = ["ASSERTIONS", "SIDES", "Assertion", "Mention", "Side", "read_mentions"]
