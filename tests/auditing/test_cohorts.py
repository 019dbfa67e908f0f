"""Cohort labels: one name per metadata value, the same in statistics, comparisons and the report."""

from __future__ import annotations

import pandas as pd

from auditing.cohorts import cohort_label, cohort_labels, cohorts, item_level
from auditing.compare import cohort_vs_rest
from auditing.load import expand_metadata, join_targets
from auditing.report.data import cohort_members
from storage import to_arrow
from tests.auditing.synthetic import GRID, synthetic_run

NO_SITE = {"north-0", "north-1"}  # their manifest rows left the site empty (scanners B and A)


def run_with_missing_sites() -> tuple[pd.DataFrame, pd.DataFrame]:
    answers, tokens = synthetic_run(per_site=6)
    for row in answers:
        if row["item_id"] in NO_SITE:
            del row["metadata"]["site"]
    answers = to_arrow("answers", answers).to_pandas().assign(run_id="r1")
    return answers, to_arrow("tokens", tokens).to_pandas().assign(run_id="r1")


def test_a_cohort_label_joins_the_values_and_names_a_gap_missing():
    assert cohort_label(["east", "A"]) == "east+A"
    assert cohort_label([None]) == cohort_label([float("nan")]) == cohort_label([pd.NA]) == "(missing)"
    frame = pd.DataFrame(
        {"site": pd.array(["east", None], dtype="str"), "scanner": ["A", None]}, index=[7, 9]
    )
    assert cohort_labels(frame, ["site", "scanner"]).to_dict() == {7: "east+A", 9: "(missing)+(missing)"}


def test_a_missing_metadata_value_is_the_cohort_missing_in_comparisons_statistics_and_the_report():
    answers, tokens = run_with_missing_sites()
    items = item_level(join_targets(tokens, answers), GRID)
    metadata = expand_metadata(answers)
    for grouping, missing in (("site", {"(missing)"}), ("site+scanner", {"(missing)+A", "(missing)+B"})):
        comparisons = cohort_vs_rest(items, grouping, metrics=("image_share",), resamples=50)
        statistics = {name: set(rows["item_id"]) for _, name, rows in cohorts(items, [grouping])}
        del statistics["all"]
        assert set(comparisons["cohort"]) == set(statistics)  # each cohort has a rest to compare with
        assert missing <= set(statistics)
        for cohort in missing:
            in_report = set(cohort_members(metadata, grouping, cohort)["item_id"])
            assert statistics[cohort] == in_report and in_report <= NO_SITE
            compared = comparisons[comparisons["cohort"] == cohort]
            assert set(compared["n_cohort"]) == {len(in_report)}  # one row per item and target class
    assert set(cohort_members(metadata, "site", "(missing)")["item_id"]) == NO_SITE
