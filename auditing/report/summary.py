"""The run's verdict in a few lines of Markdown (Prefect's run page, chat notifications), and the flag
rows as plain records (Prefect's table artifact, events)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from auditing.report.data import flag_records
from auditing.report.findings import FLAG_FIELDS, findings, plain, verdict
from storage import FlagRecord
from vocabulary.names import ITEM_SCOPE

__all__ = ["FLAG_FIELDS", "flag_records", "plain", "run_markdown", "verdict"]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def run_markdown(
    run_id: str, flags: Sequence[FlagRecord], counts: dict[str, Any], report_uri: str | None
) -> str:
    """The run's summary: verdict first, then one row per cohort finding with a column per method
    (its evidence, or "–" where that method did not raise it), the counts and the report."""
    lines = [f"# vlm-audit run `{run_id}`", "", f"**{verdict(flags)}**", ""]
    methods, cohort = findings(flags)
    if cohort:
        lines += [
            "| finding | where | target | " + " | ".join(_cell(method) for method in methods) + " |",
            "|---|---|---|" + "---|" * len(methods),
        ]
        lines += [
            f"| {_cell(finding.title)} | {_cell(finding.where)} | {_cell(finding.target_class)} | "
            + " | ".join(_cell(cell) for cell in finding.cells(methods))
            + " |"
            for finding in cohort
        ]
        lines.append("")
    items = sum(flag.scope == ITEM_SCOPE for flag in flags)
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
