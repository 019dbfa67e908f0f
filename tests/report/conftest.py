"""One synthetic run with images, overlays and a faithfulness sample, aggregated and reported once
per session; the report tests read it, the browser test opens it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from auditing.report import build_report
from storage import read_table
from tests.report.fixtures import write_synthetic_run
from tests.report.pages import Page, parse_page


@dataclass(frozen=True)
class BuiltReport:
    out: Path
    index: Path
    page: Page
    flags: pd.DataFrame


@pytest.fixture(scope="session")
def built_report(tmp_path_factory) -> BuiltReport:
    out = tmp_path_factory.mktemp("report-out")
    write_synthetic_run(out, "r1", images=out.parent / f"{out.name}-images", faithfulness=True)
    index = Path(build_report(str(out), "r1"))
    flags = read_table(str(out), "flags", run_id="r1").to_pandas()
    return BuiltReport(out, index, parse_page(index.read_text(encoding="utf-8")), flags)
