"""One definition per output row and per name: docs/outputs.md lists exactly the records' fields, the
schemas come from the records, region and target-kind names are written only in vocabulary.names, and
each rule's names only in its own rule module."""

from __future__ import annotations

import re
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from auditing.rules import RULES
from storage import RECORDS, RunRecord, table_schema
from vocabulary import names
from vocabulary.regions import standard_regions

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "outputs.md"
# the section of docs/outputs.md that documents each record
SECTIONS = {"run.json": RunRecord, **RECORDS}


def documented_columns(section: str) -> list[str]:
    """The backticked names in the first column of the section's table (`a`, `b` rows count both)."""
    text = DOCS.read_text(encoding="utf-8")
    heading = re.search(rf"^#+ {re.escape(section)}\b.*$", text, re.MULTILINE)
    assert heading, f"docs/outputs.md has no section for {section}"
    body = text[heading.end() :]
    following = re.search(r"^#+ ", body, re.MULTILINE)
    body = body[: following.start()] if following else body
    names_found = []
    for line in body.splitlines():
        cells = line.split("|")
        if line.startswith("| `") and len(cells) > 2:
            names_found += re.findall(r"`([a-z_0-9]+)`", cells[1])
    return names_found


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_docs_list_exactly_the_fields_of_each_record(section):
    record = SECTIONS[section]
    documented = documented_columns(section)
    assert len(documented) == len(set(documented)), f"{section}: a field is documented twice"
    assert set(documented) == {item.name for item in fields(record)}, section


@pytest.mark.parametrize("table", sorted(RECORDS))
def test_the_schemas_are_the_records_with_their_descriptions(table):
    schema, record = table_schema(table), RECORDS[table]
    assert schema.names == [item.name for item in fields(record)]
    for item in fields(record):
        assert schema.field(item.name).metadata[b"description"].decode() == item.metadata["description"]


def test_the_explainer_builds_the_regions_the_names_module_names():
    assert tuple(standard_regions((16, 16))) == names.REGION_NAMES
    assert set(names.REGION_LABELS) <= set(names.REGION_NAMES)


def test_every_method_of_the_registry_is_named():
    from explainer.methods import IMAGE_REFERENCE, METHODS, REFERENCE_METHODS

    assert tuple(METHODS) == names.METHOD_NAMES
    assert {*REFERENCE_METHODS, IMAGE_REFERENCE} == set(names.REFERENCE_NAMES)


# the names no module but vocabulary/names.py may spell out, the explainer's included. Region names are
# nothing else; target kinds and scopes ("answer", "cohort") are also column names, so those count where
# a value is compared or built ('== "answer"', "IN ('answer'", 'f"word-{'), not where they name a
# column, a CSS class or a page anchor. A rule's names are written only in its own rule module.
CHECKED = ("explainer", "storage", "auditing", "tasks", "flows", "vocabulary")
NAMES_MODULE = ROOT / "vocabulary" / "names.py"
ANYWHERE = names.REGION_NAMES
AS_VALUES = (*names.TARGET_KINDS, *names.FLAG_SCOPES)
RULE_MODULES = {
    Path(sys.modules[type(rule).__module__].__file__).resolve(): tuple(name.name for name in rule.names)
    for rule in RULES
}


def _pattern() -> re.Pattern:
    anywhere = "|".join(map(re.escape, ANYWHERE))
    value = "|".join(map(re.escape, AS_VALUES))
    quoted = rf"""["'](?:{value})["']"""
    return re.compile(
        rf"""["'](?:{anywhere})["']"""
        rf"|(?:==|!=|<>|\bin|\bIN|WHEN)\s*[(\[]?\s*{quoted}|\s=\s*'(?:{value})'"
        rf"|{quoted}\s*(?:==|!=|<>|THEN)"
        rf"""|["'](?:{"|".join(names.TARGET_KINDS)})-["{{]"""
    )


def _quoted(words) -> re.Pattern:
    return re.compile(rf"""["'](?:{"|".join(map(re.escape, words))})["']""")


def _literals(allowed: dict[Path, re.Pattern]) -> list[str]:
    """Lines of the checked packages that write a name as a literal outside the file allowed to."""
    found = []
    for package in CHECKED:
        for path in sorted((ROOT / package).rglob("*")):
            if path.suffix not in (".py", ".sql", ".j2"):
                continue
            patterns = [pattern for owner, pattern in allowed.items() if owner != path.resolve()]
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0] if path.suffix == ".py" else line.split("--", 1)[0]
                if any(pattern.search(code) for pattern in patterns):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_no_region_target_kind_or_scope_is_written_as_a_literal_outside_the_names_module():
    found = _literals({NAMES_MODULE.resolve(): _pattern()})
    assert not found, "names written out instead of taken from vocabulary.names:\n" + "\n".join(found)


def test_no_rule_name_is_written_as_a_literal_outside_its_rule_module():
    found = _literals({module: _quoted(rule_names) for module, rule_names in RULE_MODULES.items()})
    assert not found, "rule names written out instead of taken from their rule module:\n" + "\n".join(found)
