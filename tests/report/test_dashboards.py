"""Dashboard views over two runs' outputs, checked row by row against the known synthetic inputs."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from auditing import aggregate_run
from auditing.dashboards import RUNS_COLUMNS, create_views, view_blocks
from auditing.rules import RULE_TITLES
from flows import cli
from storage import (
    REGION_NAMES,
    SCHEMA_VERSION,
    duckdb_connect,
    open_store,
    overlay_key,
    write_part,
    write_run,
)
from tests.auditing.synthetic import answer_row, study_item, token_row
from tests.report.fixtures import CONFIG, write_synthetic_run

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "dashboards.md"
WEEKLY = "s3://scans/chest-weekly/manifest.csv"  # the manifest the documented queries chart
STUDIES = "s3://scans/studies/manifest.csv"
# every figure differs, so a column that reads the wrong count shows
RUN_COUNTS = {"items": 60, "ok": 57, "failed": 3, "errors": 5, "targets": 171, "manifest_errors": 2, "shards": 6,
              "shards_failed": 4, "shards_deferred": 1}  # fmt: skip

DASHBOARD_VIEWS = {
    "cohort_region_shares", "flags_per_run", "trust_per_cohort", "answer_distribution", "cohort_trend",
    "item_drilldown", "errors_per_run", "flag_counts", "latest_runs", "study_summary", "strategy_clusters",
}  # fmt: skip


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


def rows(con, sql: str, params: list | None = None) -> list[tuple]:
    return con.execute(sql, params).fetchall()


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
        expected = result.flag_table.groupby(["rule", "method"]).size()
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


def test_strategy_clusters_show_each_cluster_and_those_that_were_flagged(two_runs):
    con, _, aggregates = two_runs
    found = rows(
        con,
        "select run_id, cluster, n_items, metric, mean_map_path from strategy_clusters where flagged order by all",
    )
    for run, site in (("r1", "east"), ("r2", "north")):  # the site whose maps sit on the border
        clusters = aggregates[run].clusters
        flagged = [cluster for r, cluster, *_ in found if r == run]
        members = set(clusters.loc[clusters["cluster"].isin(flagged), "item_id"])
        border = {f"{site}-{i}" for i in range(20)}
        assert border <= members and len(border) >= 0.8 * len(members), run
    for run, cluster, n_items, metric, path in found:
        assert metric in ("border_share", "corners_share") and n_items >= 10
        assert Path(path).is_file() and path.endswith(f"cluster_maps/run_id={run}/cluster-{cluster:03d}.png")
    total = rows(con, "select sum(n_items) from strategy_clusters where run_id = 'r1'")[0][0]
    assert total == len(aggregates["r1"].clusters)


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


def test_a_root_written_before_a_column_existed_still_gets_every_view(tmp_path):
    """Every part predates schema version 3 (studies): those columns read as NULL, item_drilldown binds."""
    write_synthetic_run(tmp_path, "r1", overlays=())
    added = {
        "tokens": [
            "image_group",
            "image_label",
            "slice_index",
            "n_slices",
            "study_share",
            "outside_body_share",
        ],
        "answers": ["image_uris", "image_labels", "n_images"],
    }
    for table, columns in added.items():
        (part,) = (tmp_path / table / "run_id=r1").glob("*.parquet")
        pq.write_table(pq.read_table(part).drop_columns(columns), part)
    con = duckdb.connect()
    create_views(con, str(tmp_path))
    assert rows(
        con, "select count(*), count(image_label), count(image_uri), count(overlay_path) from item_drilldown"
    ) == [(120, 0, 120, 120)]  # 60 items × (answer, 'nodule'); image_uri from answers.image_uri
    assert rows(con, "select count(*), count(study_share) from tokens") == [(180, 0)]


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


def weekly_run_json(manifest: str, started: str, minutes: float, **fields) -> dict:
    """run.json fields of a scheduled run that started at `started` (UTC) and took `minutes`."""
    start = dt.datetime.fromisoformat(started)
    return {
        "attempt": 1,
        "manifest_uri": manifest,
        "config": {
            "manifest": "manifest.csv",
            "method": "chefer",
            "group_by": ["site", "site+scanner"],
            "overlays": "findings",
            "findings": ["nodule"],
        },
        "code_version": "0.1.0",
        "schema_version": SCHEMA_VERSION,
        "counts": dict(RUN_COUNTS),
        "started_at": start.isoformat(),
        "finished_at": (start + dt.timedelta(minutes=minutes)).isoformat(),
        **fields,
    }


def write_study_run(out: Path, run_id: str) -> None:
    """Longitudinal pairs (north barely looks at the prior), a volume, a plain image with a volume, a
    word with a character file names cannot hold, and a failed item."""
    items = [
        study_item(f"{site}-{k}", site, [share + 0.01 * k, 1 - share - 0.01 * k], labels=["prior", "current"])
        for site, share in (("north", 0.01), ("south", 0.4))
        for k in range(8)
    ]
    items.append(study_item("vol-0", "east", [0.0, 0.1, 0.0, 0.8, 0.1], n_slices=9, outside=[0.5] * 5))
    answer, tokens = study_item("mix-0", "east", [0.5, 0.3, 0.2], n_slices=5)
    tokens[0] |= {"image_group": 0, "image_label": None, "slice_index": None, "n_slices": None}
    for row in tokens[1:]:
        row["image_group"] = 1
    items.append((answer, tokens))
    answers, rows = [], []
    for answer, tokens in items:
        answers.append(answer | {"image_uris": [f"{answer['item_id']}/{k}.dcm" for k in range(len(tokens))]})
        rows += tokens
    north_map = rows[0]["image_relevance"].reshape(8, 8)
    rows.append(token_row("north-0", north_map, kind="word", word="épanchement"))
    answers.append(answer_row("bad-9", "east") | {"status": "error", "answer": None})
    store = open_store(str(out))
    write_part(store, "answers", run_id, 0, answers)
    write_part(store, "tokens", run_id, 0, rows)
    aggregate_run(str(out), run_id, CONFIG)
    fields = weekly_run_json(STUDIES, "2024-06-05T09:00:00+00:00", 3)
    write_run(store, run_id, {"run_id": run_id, "status": "completed", **fields,
                              "config": {**fields["config"], "overlays": "all"}})  # fmt: skip


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory):
    """Weekly runs of one manifest: w1 site east looks at the border, w2 (second attempt, with errors)
    north does, w3 nobody (no flags at all), w4 is still running; s1 a run of studies."""
    out = tmp_path_factory.mktemp("scheduled-out")
    results = {
        "w1": write_synthetic_run(
            out, "w1", overlays=("east-0",), run_fields=weekly_run_json(WEEKLY, "2024-06-03T06:00:00+00:00", 10.5)
        ),
        "w2": write_synthetic_run(
            out, "w2", border_site="north", seed=1, overlays=(),
            run_fields=weekly_run_json(WEEKLY, "2024-06-10T08:00:00+02:00", 12, attempt=2) | {
                "config": {"method": "chefer", "overlays": "answer"},
            },
        ),
        "w3": write_synthetic_run(
            out, "w3", border_site="nobody", seed=2, overlays=(),
            run_fields=weekly_run_json(WEEKLY, "2024-06-17T06:00:00+00:00", 9),
        ),
    }  # fmt: skip
    store = open_store(str(out))
    occurred = dt.datetime(2024, 6, 10, 6, 1, tzinfo=dt.UTC)
    write_part(store, "errors", "w2", "part-manifest", [
        {"row_number": row, "stage": "manifest", "error_type": "MissingImage", "message": f"row {row}: no image",
         "occurred_at": occurred + dt.timedelta(seconds=row)} for row in (62, 61)
    ])  # fmt: skip
    write_part(store, "errors", "w2", 0, [
        {"item_id": "x-1", "row_number": 63, "stage": "image", "error_type": "CorruptImage",
         "message": "x-1.png is truncated", "occurred_at": occurred}
    ])  # fmt: skip
    running = weekly_run_json(WEEKLY, "2024-06-24T06:00:00+00:00", 0) | {"counts": {}, "finished_at": None}
    write_run(store, "w4", {"run_id": "w4", "status": "running", **running})
    write_study_run(out, "s1")
    con = duckdb.connect()
    create_views(con, str(out))
    return con, out, results


def test_runs_have_manifest_counts_duration_attempt_and_code_version(scheduled):
    con, _, _ = scheduled
    assert [column for column, *_ in rows(con, "describe runs")] == list(RUNS_COLUMNS)
    got = rows(
        con,
        "select run_id, status, manifest, attempt, code_version, schema_version, group_by, n_items, n_ok, n_failed, "
        "n_errors, n_targets, n_manifest_errors, n_shards, n_shards_failed, n_shards_deferred, total_seconds, "
        "duration_seconds, strftime(created_at, '%Y-%m-%d %H:%M') from runs where manifest = ? order by created_at",
        [WEEKLY],
    )
    counts = (*RUN_COUNTS.values(), 12.5)
    assert got == [
        (
            "w1",
            "completed",
            WEEKLY,
            1,
            "0.1.0",
            SCHEMA_VERSION,
            "site,site+scanner",
            *counts,
            630.0,
            "2024-06-03 06:00",
        ),
        (
            "w2",
            "completed",
            WEEKLY,
            2,
            "0.1.0",
            SCHEMA_VERSION,
            None,
            *counts,
            720.0,
            "2024-06-10 06:00",
        ),  # +02:00
        (
            "w3",
            "completed",
            WEEKLY,
            1,
            "0.1.0",
            SCHEMA_VERSION,
            "site,site+scanner",
            *counts,
            540.0,
            "2024-06-17 06:00",
        ),
        (
            "w4",
            "running",
            WEEKLY,
            1,
            "0.1.0",
            SCHEMA_VERSION,
            "site,site+scanner",
            *[None] * 11,
            "2024-06-24 06:00",
        ),
    ]


def comparison(result, cohort: str, metric: str = "border") -> float:
    c = result.comparisons
    [value] = c[(c["grouping"] == "site") & (c["cohort"] == cohort) & (c["target_class"] == "answer")
                & (c["metric"] == metric)]["difference"]  # fmt: skip
    return value


def test_cohort_trend_follows_each_cohort_against_the_rest_run_after_run(scheduled):
    con, _, results = scheduled
    trend = rows(
        con,
        "select cohort, run_index, run_id, difference, flagged from cohort_trend where manifest = ? "
        "and grouping = 'site' and target_class = 'answer' and metric = 'border' order by cohort, run_index",
        [WEEKLY],
    )
    assert [(cohort, index, run) for cohort, index, run, *_ in trend] == [
        (site, index, run)
        for site in ("east", "north", "south")
        for index, run in enumerate(("w1", "w2", "w3"), 1)
    ]  # w4 is still running: nothing aggregated
    for cohort, _, run, difference, flagged in trend:
        assert difference == pytest.approx(comparison(results[run], cohort))
        assert flagged == ((run, cohort) in {("w1", "east"), ("w2", "north")})
    assert trend[0][3] > 0.5 and trend[1][3] < -0.3  # east: border, then lungs
    means = rows(
        con,
        "select cohort_mean, rest_mean, ci_low, ci_high, n_cohort, n_rest from cohort_trend where run_id = 'w1' "
        "and grouping = 'site' and cohort = 'east' and target_class = 'answer' and metric = 'image_share'",
    )
    c = results["w1"].comparisons.set_index(["grouping", "cohort", "target_class", "metric"])
    expected = c.loc[("site", "east", "answer", "image_share")]
    assert means == [
        pytest.approx(
            tuple(expected[["cohort_mean", "rest_mean", "ci_low", "ci_high", "n_cohort", "n_rest"]])
        )
    ]


def test_item_drilldown_names_each_targets_overlay_and_the_report(scheduled):
    con, out, _ = scheduled
    columns = "item_id, target_class, image_index, image_uri, status, overlay_path, report_path"
    drill = rows(con, f"select {columns} from item_drilldown where run_id = 's1' order by all")
    overlay = {(item, target, image): path for item, target, image, _, _, path, _ in drill}
    path = lambda item, name: f"{out}/{overlay_key('s1', item, name)}"  # noqa: E731
    assert overlay["north-0", "answer", 0] == path("north-0", "answer")
    assert overlay["north-0", "answer", 1] == path("north-0", "answer-image1")  # the current image
    # a name overlay_key had to change: '_' for the unsafe character, and a hash of the original
    assert overlay["north-0", "épanchement", 0] == path("north-0", "word-épanchement")
    assert overlay["north-0", "épanchement", 0].endswith("/word-_panchement-69741fda.png")
    # the volume's three slices with the most relevance (slices 2, 6 and 8 of 0..8, 1-based in the name)
    assert [overlay["vol-0", "answer", k] for k in range(5)] == [
        None, path("vol-0", "answer-slice003"), None, path("vol-0", "answer-slice007"), path("vol-0", "answer-slice009")
    ]  # fmt: skip
    assert [overlay["mix-0", "answer", k] for k in range(3)] == [
        path("mix-0", "answer"), path("mix-0", "answer-volume1-slice003"), path("mix-0", "answer-volume1-slice005")
    ]  # a plain image and a volume  # fmt: skip
    report = f"{out}/report/run_id=s1/index.html"
    assert ("bad-9", None, None, "images/bad-9.png", "error", None, report) in drill  # failed: no target
    assert {report_path for *_, report_path in drill} == {report}
    assert ("mix-0", "answer", 2, "mix-0/1.dcm") in {row[:4] for row in drill}  # the volume's URI
    # w1 (overlays 'findings' of ['nodule']) has both targets' overlays, w2 (overlays 'answer') the answer's
    written = rows(
        con,
        "select run_id, target_class, count(*), count(overlay_path) from item_drilldown where run_id in ('w1', 'w2') "
        "group by all order by all",
    )
    assert written == [("w1", "answer", 60, 60), ("w1", "nodule", 60, 60), ("w2", "answer", 60, 60),
                       ("w2", "nodule", 60, 0)]  # fmt: skip
    [(answer_overlay, flags, border, image_share, metadata)] = rows(
        con,
        "select overlay_path, item_flags, border_share, image_share, metadata from item_drilldown "
        "where run_id = 'w1' and item_id = 'east-0' and target_class = 'answer'",
    )
    assert Path(answer_overlay).is_file()  # the fixture wrote it where the pipeline does
    assert flags == "off_anatomy" and border > 0.5 and metadata == {"site": "east", "scanner": "B"}
    tokens = pq.read_table(out / "tokens" / "run_id=w1").to_pandas()
    [expected] = tokens[(tokens["item_id"] == "east-0") & (tokens["target_kind"] == "answer")].itertuples()
    assert (border, image_share) == pytest.approx((expected.region_shares["border"], expected.image_share))


def test_errors_per_run_count_stage_and_type(scheduled):
    con, _, _ = scheduled
    assert rows(
        con,
        "select run_id, manifest, strftime(created_at, '%Y-%m-%d'), stage, error_type, n_errors, first_message "
        "from errors_per_run order by all",
    ) == [
        ("w2", WEEKLY, "2024-06-10", "image", "CorruptImage", 1, "x-1.png is truncated"),
        ("w2", WEEKLY, "2024-06-10", "manifest", "MissingImage", 2, "row 61: no image"),
    ]


def test_flag_counts_have_a_zero_row_for_every_rule_a_run_did_not_raise(scheduled):
    con, _, results = scheduled
    counts = rows(con, "select run_id, rule, n_flags, aggregated from flag_counts order by run_id, rule")
    assert {run for run, *_ in counts} == {"w1", "w2", "w3", "w4", "s1"}
    for run in ("w1", "w2", "w3", "w4", "s1"):
        per_rule = {rule: n for r, rule, n, _ in counts if r == run}
        assert set(per_rule) == set(RULE_TITLES), run  # the known rules, zero-filled
        raised = {"w4": {}, "s1": {"change_ignores_prior": 1}}.get(run)
        if raised is None:
            raised = results[run].flag_table.groupby("rule").size().to_dict()
        assert {rule: n for rule, n in per_rule.items() if n} == raised, run
    assert {(rule, n) for r, rule, n, _ in counts if r == "w3"} == {(rule, 0) for rule in RULE_TITLES}
    assert {(run, aggregated) for run, _, _, aggregated in counts} == {
        ("w1", True), ("w2", True), ("w3", True), ("w4", False), ("s1", True)
    }  # fmt: skip


def test_latest_runs_take_the_last_completed_run_of_each_manifest(scheduled):
    con, _, _ = scheduled
    latest = rows(con, "select manifest, run_id, n_flags, n_cohort_flags from latest_runs order by manifest")
    assert latest == [
        (WEEKLY, "w3", 0, 0),  # w4 started later but is still running
        (STUDIES, "s1", 1, 1),
    ]
    columns = [column for column, *_ in rows(con, "describe latest_runs")]
    assert columns == [*RUNS_COLUMNS, "n_flags", "n_cohort_flags"]


def test_study_summary_per_cohort(scheduled):
    con, _, _ = scheduled
    summary = {
        cohort: values
        for cohort, *values in rows(
            con,
            "select cohort, n_volume_items, slice_position_mean, n_longitudinal_items, prior_share_mean, "
            "n_barely_prior, barely_prior_rate, change_ignores_prior, manifest from study_summary "
            "where grouping in ('all', 'site') and target_class = 'answer'",
        )
    }
    assert set(summary) == {"all", "north", "south", "east"}  # s1 alone: the other runs have single images
    north = summary["north"]
    assert north[2:] == [8, pytest.approx(0.01 + 0.01 * 3.5), 8, 1.0, True, STUDIES]
    assert summary["south"][2:5] == [8, pytest.approx(0.4 + 0.01 * 3.5), 0] and not summary["south"][6]
    # east: vol-0's slices 2, 6, 8 of 0..8 carry 0.1, 0.8, 0.1; mix-0's slices 2, 4 of 0..4 carry 0.3, 0.2
    assert summary["east"][:2] == [2, pytest.approx((0.1 * 0.25 + 0.8 * 0.75 + 0.1 + 0.6 * 0.5 + 0.4) / 2)]


def test_views_command_writes_a_duckdb_file_that_other_connections_query(scheduled, tmp_path, capsys):
    _, out, _ = scheduled
    database = tmp_path / "audit.duckdb"
    assert cli.main(["views", str(out), str(database)]) == cli.EXIT_OK
    printed = capsys.readouterr().out
    lines = dict(line.split(None, 1) for line in printed.splitlines())
    assert lines["runs"] == "reads files" and lines["errors"] == "reads files"
    assert lines["faithfulness"] == "empty stand-in (no files yet)"
    assert {name for name, how in lines.items() if how == "dashboard view"} == DASHBOARD_VIEWS
    with duckdb.connect(str(database), read_only=True) as other:
        quiet = other.execute("select rule, n_flags from flag_counts where run_id = 'w3'").fetchall()
    assert sorted(quiet) == [(rule, 0) for rule in sorted(RULE_TITLES)]
    # python -m auditing.dashboards refreshes the same file, and says the same
    command = [sys.executable, "-m", "auditing.dashboards", str(out), str(database)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout == printed


def documented_query(name: str) -> str:
    match = re.search(rf"<!-- tested-query: {name} -->\s*```sql\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert match, f"docs/dashboards.md lost its tested query {name!r}"
    return match.group(1)


def test_the_documented_dashboard_queries(scheduled):
    """The SQL docs/dashboards.md gives the dashboard tool, as written there."""
    con, _, results = scheduled
    trend = con.sql(documented_query("governance-trend"))
    assert trend.columns == ["created_at", "cohort", "cohort_mean", "rest_mean", "difference", "ci_low", "ci_high",
                             "flagged"]  # fmt: skip
    points = trend.fetchall()
    assert [(at.strftime("%m-%d"), cohort) for at, cohort, *_ in points] == [
        (day, site) for day in ("06-03", "06-10", "06-17") for site in ("east", "north", "south")
    ]  # w4 (running) has no point yet; s1 is another manifest
    runs = {"06-03": "w1", "06-10": "w2", "06-17": "w3"}
    for at, cohort, _, _, difference, low, high, _ in points:
        assert difference == pytest.approx(comparison(results[runs[at.strftime("%m-%d")]], cohort))
        assert low <= difference <= high
    flagged = [(at.strftime("%m-%d"), cohort) for at, cohort, *_, flag in points if flag]
    assert flagged == [("06-03", "east"), ("06-10", "north")]
    counts = con.sql(documented_query("flag-counts"))
    assert counts.columns == ["created_at", "run_id", "rule", "n_flags"]
    bars = counts.fetchall()
    assert len(bars) == 3 * len(RULE_TITLES)  # every completed run, every rule
    per_run = {run: sum(n for _, r, _, n in bars if r == run) for run in ("w1", "w2", "w3")}
    assert per_run == {run: len(result.flags) for run, result in results.items()}
    assert per_run["w3"] == 0 and [n for _, run, _, n in bars if run == "w3"] == [0] * len(RULE_TITLES)
