"""Dashboard views over two runs' outputs, checked row by row against the known synthetic inputs."""

from __future__ import annotations

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from auditing.dashboards import create_views, view_blocks
from storage import REGION_NAMES, duckdb_connect
from tests.report.fixtures import write_synthetic_run

DASHBOARD_VIEWS = {"cohort_region_shares", "flags_per_run", "trust_per_cohort", "answer_distribution"}


def scanner_b_says_no(row: dict) -> str:
    return "No nodule " if row["metadata"]["scanner"] == "B" else row["answer"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """r1: site east looks at the border, with a faithfulness sample; r2 a month later: north does,
    and scanner B answers 'No nodule'."""
    out = tmp_path_factory.mktemp("dashboards-out")
    first = write_synthetic_run(out, "r1", faithfulness=True, overlays=())
    second = write_synthetic_run(
        out,
        "r2",
        border_site="north",
        seed=1,
        started_at="2024-07-01T08:30:00+02:00",
        overlays=(),
        answer_for=scanner_b_says_no,
    )
    con = duckdb.connect()
    created = create_views(con, str(out))
    return con, created, {"r1": first, "r2": second}


def rows(con, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def test_every_view_is_created_and_missing_tables_get_empty_standins(two_runs):
    con, created, _ = two_runs
    assert {name for name, how in created.items() if how == "view"} == DASHBOARD_VIEWS
    assert created["errors"] == "empty" and created["cohort_trust"] == "files"
    assert rows(con, "select count(*) from errors") == [(0,)]
    assert "stage" in {column for column, *_ in rows(con, "describe errors")}


def test_cohort_region_shares_over_time(two_runs):
    con, _, results = two_runs
    per_run = rows(
        con,
        "select run_id, strftime(created_at, '%Y-%m-%d %H:%M'), count(*) from cohort_region_shares group by all order by 1",
    )
    # 4 cohorts (all + three sites) × 2 target classes × every region
    assert per_run == [
        ("r1", "2024-06-01 12:00", 8 * len(REGION_NAMES)),
        ("r2", "2024-07-01 06:30", 8 * len(REGION_NAMES)),  # +02:00 in run.json, UTC here
    ]
    border = rows(
        con,
        "select run_id, cohort, mean from cohort_region_shares where grouping = 'site' and target_class = 'answer' "
        "and region = 'border' order by run_id, cohort",
    )
    assert [(run, cohort) for run, cohort, _ in border] == [
        (run, site) for run in ("r1", "r2") for site in ("east", "north", "south")
    ]
    looked_at_border = {(run, cohort) for run, cohort, mean in border if mean == pytest.approx(1.0)}
    assert looked_at_border == {("r1", "east"), ("r2", "north")}
    assert all(
        mean == pytest.approx(0.0) for run, cohort, mean in border if (run, cohort) not in looked_at_border
    )
    expected = results["r1"].cohort_regions.set_index(["grouping", "cohort", "target_class", "region"])
    low, high = rows(
        con,
        "select ci_low, ci_high from cohort_region_shares where run_id = 'r1' and grouping = 'all' "
        "and target_class = 'answer' and region = 'border'",
    )[0]
    assert (low, high) == pytest.approx(
        tuple(expected.loc[("all", "all", "answer", "border"), ["ci_low", "ci_high"]])
    )


def test_flags_per_run(two_runs):
    con, _, results = two_runs
    counted = {
        (run, rule, method): n
        for run, rule, method, n in rows(con, "select run_id, rule, method, n_flags from flags_per_run")
    }
    assert counted[("r1", "border_share_above_baseline", "chefer")] == 2  # east: answer and 'nodule'
    assert counted[("r2", "border_share_above_baseline", "chefer")] == 2  # north
    assert counted[("r1", "off_anatomy", "chefer")] == 20 and counted[("r2", "off_anatomy", "chefer")] == 20
    assert counted[("r1", "explanations_not_trustworthy", "chefer")] == 2  # east: against both references
    assert ("r2", "explanations_not_trustworthy", "chefer") not in counted
    for run, result in results.items():
        expected = result.flags.groupby(["rule", "method"]).size()
        assert {
            (rule, method): n for (r, rule, method), n in counted.items() if r == run
        } == expected.to_dict()


def test_trust_per_cohort(two_runs):
    con, _, _ = two_runs
    trust = rows(
        con,
        "select run_id, grouping, cohort, method, reference, n_items, n_checkable, peak_in_evidence_rate, "
        "not_trustworthy from trust_per_cohort where target_class = 'answer' order by cohort, method, reference",
    )
    expected = []
    for grouping, cohort, chefer_rate in (("all", "all", 2 / 3), ("site", "east", 0.0), ("site", "north", 1.0),
                                          ("site", "south", 1.0)):  # fmt: skip
        flagged = cohort == "east"
        expected += [
            ("r1", grouping, cohort, "chefer", "occlusion", 60 if cohort == "all" else 20, 60 if cohort == "all" else 20,
             pytest.approx(chefer_rate), flagged),
            ("r1", grouping, cohort, "chefer", "pixel_occlusion", 60 if cohort == "all" else 20,
             60 if cohort == "all" else 20, pytest.approx(chefer_rate), flagged),
            ("r1", grouping, cohort, "occlusion", "pixel_occlusion", 60 if cohort == "all" else 20,
             60 if cohort == "all" else 20, 1.0, False),
        ]  # fmt: skip
    assert trust == expected  # pixel occlusion against token occlusion is left out; r2 had no sample


def test_parts_written_before_a_column_existed_read_as_null(tmp_path):
    write_synthetic_run(tmp_path, "r1", faithfulness=True, overlays=())
    old = tmp_path / "cohort_trust" / "run_id=r0"
    old.mkdir()
    (new_part,) = (tmp_path / "cohort_trust" / "run_id=r1").glob("*.parquet")
    newer = ["n_checkable", "reference", "peak_in_evidence_rate", "peak_in_evidence_ci_low",
             "peak_in_evidence_ci_high", "evidence_mass_mean"]  # fmt: skip
    version_1 = pq.read_table(new_part).filter(pc.field("reference") == "occlusion").drop_columns(newer)
    pq.write_table(version_1, old / "part-aggregate.parquet")
    con = duckdb.connect()
    create_views(con, str(tmp_path))
    counts = rows(
        con,
        "select run_id, count(*), count(n_checkable), count(reference) from trust_per_cohort "
        "where target_class = 'answer' group by run_id order by run_id",
    )
    assert counts == [
        ("r0", 4, 0, 0),
        ("r1", 12, 12, 12),
    ]  # all + three sites; r1: 3 method × reference pairs


def test_answer_distribution_per_cohort(two_runs):
    con, _, _ = two_runs
    distribution = {
        (run, grouping, cohort, answer): (n, share)
        for run, grouping, cohort, answer, n, share in rows(
            con, "select run_id, grouping, cohort, answer, n_items, share from answer_distribution"
        )
    }
    assert distribution[("r1", "all", "all", "nodule right upper")] == (60, 1.0)
    assert distribution[("r1", "site", "east", "nodule right upper")] == (20, 1.0)
    assert distribution[("r2", "all", "all", "no nodule")] == (30, 0.5)  # lower-cased and trimmed
    assert distribution[("r2", "site", "north", "no nodule")] == (10, 0.5)
    assert distribution[("r2", "scanner", "B", "no nodule")] == (30, 1.0)
    assert ("r2", "scanner", "A", "no nodule") not in distribution
    # r1: one answer in 1 + 3 sites + 2 scanners cohorts; r2: two answers in all and the sites, one per scanner
    assert len(distribution) == 6 + (2 + 3 * 2 + 2)


def test_views_over_a_root_without_any_run_are_empty_with_the_same_columns(two_runs, tmp_path):
    con = duckdb.connect()
    created = create_views(con, str(tmp_path))
    assert {how for name, how in created.items() if name not in DASHBOARD_VIEWS} == {"empty"}
    full = two_runs[0]
    for view in created:
        assert rows(con, f"describe {view}") == rows(full, f"describe {view}"), view
    for view in DASHBOARD_VIEWS:
        assert rows(con, f"select count(*) from {view}") == [(0,)]


def test_the_sql_file_has_a_source_for_each_table_the_views_read():
    blocks = view_blocks()
    sources = {block.name for block in blocks if block.kind == "source"}
    assert {"runs", "answers", "cohort_regions", "cohort_trust", "flags"} <= sources
    assert all(block.glob and block.glob.startswith("${OUT}/") for block in blocks if block.kind == "source")
    assert {block.kind for block in blocks} == {"source", "view"}


@pytest.mark.integration
def test_views_read_an_s3_root(s3_bucket):
    out = f"{s3_bucket}/audit-out"
    write_synthetic_run(out, "r1", overlays=(), per_site=6)
    con = duckdb_connect(out)  # as docs/dashboards.md shows; create_views configures a plain one too
    created = create_views(con, out)
    assert created["flags"] == "files" and created["errors"] == "empty"
    assert rows(con, "select count(*) from flags_per_run where rule = 'off_anatomy'") == [(1,)]
    assert rows(con, "select strftime(created_at, '%Y-%m-%d') from runs") == [("2024-06-01",)]
