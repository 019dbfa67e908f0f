"""The run's verdict in a few lines of Markdown (Prefect's run page, chat notifications), and the flag
rows as plain records (Prefect's table artifact, events)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from auditing.report.sections import RULE_TITLES, cohort_name

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


def flag_records(flags: pd.DataFrame) -> list[dict[str, Any]]:
    """The flags as plain records (no NaN: missing values are None), with a `title` in words."""
    if flags.empty:
        return []
    frame = flags.reindex(columns=["scope", *FLAG_FIELDS])
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return [record | {"title": RULE_TITLES.get(record["rule"], str(record["rule"]))} for record in records]


def verdict(flags: list[dict[str, Any]]) -> str:
    """One sentence: how many cohort and item flags, or that nothing was flagged."""
    cohort = [flag for flag in flags if flag["scope"] != "item"]
    items = len(flags) - len(cohort)
    if not flags:
        return "No flags were raised."
    parts = [f"{len(cohort)} cohort flag{'s' * (len(cohort) != 1)}"] if cohort else []
    parts += [f"{items} item flag{'s' * (items != 1)}"] if items else []
    return " and ".join(parts) + " raised."


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def run_markdown(
    run_id: str, flags: list[dict[str, Any]], counts: dict[str, Any], report_uri: str | None
) -> str:
    """The run's summary: verdict first, then the cohort flags (one row each), the counts and the report."""
    lines = [f"# vlm-audit run `{run_id}`", "", f"**{verdict(flags)}**", ""]
    cohort = [flag for flag in flags if flag["scope"] != "item"]
    if cohort:
        lines += ["| finding | where | method | target | evidence |", "|---|---|---|---|---|"]
        lines += [
            f"| {_cell(flag['title'])} | {_cell(cohort_name(flag['grouping'], flag['cohort']))} | "
            f"{_cell(flag['method'])} | {_cell(flag['target_class'])} | {_cell(flag['message'])} |"
            for flag in cohort
        ]
        lines.append("")
    items = len(flags) - len(cohort)
    if items:
        lines += [f"{items} item-level flags are in the run's flags table and the report.", ""]
    if counts:
        lines.append(
            f"Items: {counts.get('items', '?')} ({counts.get('ok', '?')} answered, {counts.get('failed', '?')} "
            f"failed); explained targets: {counts.get('targets', '?')}; error records: {counts.get('errors', '?')}."
        )
    if report_uri:
        lines += ["", f"Report: [{report_uri}]({report_uri})"]
    return "\n".join(lines) + "\n"
