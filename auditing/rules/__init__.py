"""The flag rules, one module per rule, registered once here: aggregation evaluates them in this
order, and the report, the Prefect artifacts and the dashboard views take their names, titles and
the tables they mark from this registry.

A new rule is a module with a `Rule` subclass and its `RULE`, added to `RULES` (docs/pipeline.md,
"Adding a rule").
"""

from __future__ import annotations

from auditing.flags import FlagThresholds, RaisedFlag
from auditing.rules import off_anatomy, prior, roi, shortcut_shares, strategy_cluster, trust
from auditing.rules.base import Rule, RuleInputs, RuleName

# the order flags are raised (and written) in
RULES: tuple[Rule, ...] = (
    roi.RULE,
    off_anatomy.RULE,
    prior.RULE,
    trust.RULE,
    shortcut_shares.RULE,
    strategy_cluster.RULE,
)
RULE_NAMES: dict[str, RuleName] = {name.name: name for rule in RULES for name in rule.names}
RULE_TITLES: dict[str, str] = {name: entry.title for name, entry in RULE_NAMES.items()}


def rule_title(rule: str) -> str:
    """The plain-language title of a rule name; the name itself for a rule this version does not know."""
    return RULE_TITLES.get(rule, rule)


def rules_marking(table: str) -> frozenset[str]:
    """The names of the rules whose flags mark rows of `table` (`Rule.marks`)."""
    return frozenset(name.name for rule in RULES if rule.marks == table for name in rule.names)


def evaluate_rules(inputs: RuleInputs, thresholds: FlagThresholds) -> list[RaisedFlag]:
    """Every rule's flags on one aggregation's inputs, rule after rule in `RULES` order."""
    return [flag for rule in RULES for flag in rule.evaluate(inputs, thresholds)]


__all__ = [
    "RULES",
    "RULE_NAMES",
    "RULE_TITLES",
    "Rule",
    "RuleInputs",
    "RuleName",
    "evaluate_rules",
    "rule_title",
    "rules_marking",
]
