"""The rule registry: each rule one module behind one interface, named once, raising typed flags."""

from __future__ import annotations

from dataclasses import fields

import pytest

from auditing import aggregate
from auditing.flags import FlagThresholds, RaisedFlag, flag_table, part_rows
from auditing.rules import RULE_NAMES, RULES, RuleInputs, rule_title, rules_marking
from storage import FLAGS_SCHEMA, FlagRecord, table_schema
from tests.auditing.synthetic import synthetic_run
from tests.auditing.test_statistics import CONFIG, tables
from vocabulary.names import FLAG_SCOPES


def test_every_rule_name_is_registered_once_with_a_title():
    names = [name.name for rule in RULES for name in rule.names]
    assert len(names) == len(set(names)) == len(RULE_NAMES)
    assert all(rule_title(name) and rule_title(name) != name for name in names)
    assert rule_title("a_rule_of_a_later_version") == "a_rule_of_a_later_version"


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: type(rule).__name__)
def test_a_rule_declares_its_scope_table_and_thresholds(rule):
    assert rule.scope in FLAG_SCOPES
    table_schema(rule.marks)  # an output table its flags mark
    assert set(rule.thresholds) <= {item.name for item in fields(FlagThresholds)}
    assert rule.evaluate(RuleInputs(method="chefer"), FlagThresholds()) == []  # nothing computed: no flags
    assert rule.describe(FlagThresholds()).endswith(".")
    assert {name.name for name in rule.names} <= rules_marking(rule.marks)


def test_flags_are_records_from_the_rule_to_the_table_in_registry_order():
    answers, tokens = tables(*synthetic_run())
    flags = aggregate(tokens, answers, CONFIG).flags
    assert flags and all(isinstance(flag, RaisedFlag) and isinstance(flag, FlagRecord) for flag in flags)
    positions = {name.name: index for index, rule in enumerate(RULES) for name in rule.names}
    raised = [positions[flag.rule] for flag in flags]
    assert raised == sorted(raised)
    assert all(list(row) == FLAGS_SCHEMA.names for row in part_rows(flags))  # run_id is the part's path
    assert list(flag_table(flags)["run_id"].unique()) == ["r1"]
