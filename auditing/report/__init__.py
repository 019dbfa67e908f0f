"""The static HTML audit report of one run: `build_report` writes it, `report_key` says where.

`build` assembles the page; `data` reads the run's tables and images, `findings` groups the flags
into findings (verdict box, flags table; `summary` writes the Prefect Markdown from them), `sections`
turns the rest into rows for the template, `gallery` picks the flagged items and `question` shades
their question words, `figures` draws heatmaps and bar charts, and `templates/report.html.j2` is the page.
"""

from auditing.report.build import build_report, report_key
from auditing.report.data import RunNotFound

__all__ = ["RunNotFound", "build_report", "report_key"]
