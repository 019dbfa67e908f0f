"""Flags as findings: one finding per rule × cohort × target class, the methods that raised it as columns.

A run with a faithfulness sample raises the same shortcut rule once for the run's maps and once per
method of the sample (`chefer`, `chefer (faithfulness sample)`, ...). The verdict box, the report's
flags table and the Prefect Markdown artifact all show one row per finding with one column per method
(its evidence where it raised the finding, "–" where it did not), built here from the flag records.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from auditing.flags import FlagThresholds, part_rows
from auditing.report.sections import cohort_name, num, pct
from auditing.rules import RULES, rule_title
from storage import FlagRecord
from vocabulary.names import FLAG_SCOPES, ITEM_SCOPE

FLAG_FIELDS = (
    "rule",
    "method",
    "grouping",
    "cohort",
    "target_class",
    "item_id",
    "value",
    "threshold",
    "message",
)
ITEM_FLAG_ROWS = 50  # item-level flags listed in the table; the flags table holds them all
NOT_RAISED = "–"


def plain(flag: FlagRecord) -> dict[str, Any]:
    """A flag as JSON-ready fields with its title (Prefect's table artifact and events)."""
    return {"title": rule_title(flag.rule), **part_rows([flag])[0]}


def verdict(flags: Sequence[FlagRecord]) -> str:
    """One sentence: how many cohort, cluster and item flags, or that nothing was flagged."""
    if not flags:
        return "No flags were raised."
    counts = Counter(flag.scope for flag in flags)
    parts = [
        f"{counts[scope]} {scope} flag{'s' * (counts[scope] != 1)}" for scope in FLAG_SCOPES if counts[scope]
    ]
    return (", ".join(parts[:-1]) + " and " if len(parts) > 1 else "") + parts[-1] + " raised."


def evidence(flag: FlagRecord) -> str:
    """'100% vs 33% in the rest (flag at ≥ 1.5× the rest)' and the like, per rule family."""
    value, threshold = flag.value, flag.threshold
    if flag.baseline is not None:  # the share and cluster rules: against the rest
        return f"{pct(value)} vs {pct(flag.baseline)} in the rest (flag at ≥ {num(threshold, 1)}× the rest)"
    if str(flag.metric or "").startswith("spearman"):
        return f"{num(value)} (flag below {num(threshold)})"
    return f"{pct(value)} (flag below {pct(threshold)})"


def _metric_label(metric: Any) -> str:
    """'peak_in_pixel_occlusion_evidence' → 'pixel occlusion: ' (which reference); '' for the rest."""
    text = str(metric or "")
    if text.startswith("peak_in_") and text.endswith("_evidence"):
        return text.removeprefix("peak_in_").removesuffix("_evidence").replace("_", " ") + ": "
    return ""


@dataclass
class Finding:
    """One rule × cohort × target class, and what each method that raised it found."""

    rule: str
    title: str
    grouping: Any
    cohort: Any
    target_class: Any
    evidence: dict[str, list[str]] = field(default_factory=dict)  # method → evidence, one per metric
    messages: list[tuple[str, str]] = field(default_factory=list)  # (method, message) per flag

    @property
    def where(self) -> str:
        return cohort_name(self.grouping, self.cohort)

    def cells(self, methods: list[str]) -> list[str]:
        """The evidence under each method's column ('; ' between metrics), NOT_RAISED where it did not raise it."""
        return [
            "; ".join(self.evidence[method]) if method in self.evidence else NOT_RAISED for method in methods
        ]


def findings(records: Sequence[FlagRecord]) -> tuple[list[str], list[Finding]]:
    """(methods in the order they first raised a model-level flag, one Finding per rule × cohort × target)."""
    grouped: dict[tuple, Finding] = {}
    for flag in (record for record in records if record.scope != ITEM_SCOPE):
        key = (flag.rule, flag.grouping, flag.cohort, flag.target_class)
        finding = grouped.setdefault(key, Finding(flag.rule, rule_title(flag.rule), *key[1:]))
        method = str(flag.method)
        finding.evidence.setdefault(method, []).append(_metric_label(flag.metric) + evidence(flag))
        finding.messages.append((method, str(flag.message)))
    methods = list(dict.fromkeys(method for finding in grouped.values() for method in finding.evidence))
    return methods, list(grouped.values())


def _item_row(flag: FlagRecord) -> dict[str, Any]:
    return {
        "title": rule_title(flag.rule),
        "rule": flag.rule,
        "method": flag.method,
        "where": f"item {flag.item_id}",
        "target_class": flag.target_class,
        "evidence": evidence(flag),
        "message": flag.message,
    }


def flag_rows(flags: Sequence[FlagRecord]) -> dict[str, Any]:
    """The flags table: cohort findings (one row each, a column per method), item flag rows (capped at
    ITEM_FLAG_ROWS), item flag counts per rule title, and how many item flags the table leaves out."""
    methods, cohort = findings(flags)
    items = [flag for flag in flags if flag.scope == ITEM_SCOPE]
    counts = Counter(rule_title(flag.rule) for flag in items)
    return {
        "methods": methods,
        "cohort": [{"finding": finding, "cells": finding.cells(methods)} for finding in cohort],
        "item": [_item_row(flag) for flag in items[:ITEM_FLAG_ROWS]],
        "item_counts": sorted(counts.items(), key=lambda pair: (-pair[1], pair[0])),
        "left_out": max(0, len(items) - ITEM_FLAG_ROWS),
    }


def verdict_box(flags: Sequence[FlagRecord], anchors: dict[tuple[str, str], str]) -> dict[str, Any]:
    """The report's first words: one sentence for the run, then one row per finding with a tick under
    each method that raised it, linked to its cohort section (`anchors`: (grouping, cohort) → id) or
    to the flags table."""
    methods, cohort = findings(flags)
    rows = [
        {
            "sentence": f"{finding.where}: {finding.title.lower()} ('{finding.target_class}').",
            "by": [method in finding.evidence for method in methods],
            "anchor": anchors.get((finding.grouping, finding.cohort), "flags"),
        }
        for finding in cohort
    ]
    return {"sentence": verdict(flags), "methods": methods, "rows": rows}


def rule_rows(flags: Sequence[FlagRecord], thresholds: FlagThresholds | None) -> list[dict[str, Any]]:
    """The rules that raised the run's flags, in registry order: the titles and names they raised and
    what they flag, with the thresholds the aggregation recorded (none without an aggregation)."""
    raised = {flag.rule for flag in flags}
    rows = []
    for rule in RULES if thresholds is not None else ():
        names = [(name.title, name.name) for name in rule.names if name.name in raised]
        if names:
            rows.append({"names": names, "sentence": rule.describe(thresholds)})
    return rows
