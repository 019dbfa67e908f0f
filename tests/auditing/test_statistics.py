"""Cohort statistics and flags on hand-made Parquet inputs with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from auditing import (
    AggregateConfig,
    StatsConfig,
    aggregate,
    aggregate_run,
    compare_runs,
    item_level,
    join_targets,
    mean_ci,
)
from auditing.bootstrap import difference_ci
from storage import open_store, read_table, to_arrow, write_part
from tests.auditing.synthetic import GRID, faithfulness_rows, synthetic_run

CONFIG = AggregateConfig(group_by=("site",), stats=StatsConfig(resamples=400))


def tables(answers, tokens):
    return to_arrow("answers", answers).to_pandas().assign(run_id="r1"), to_arrow(
        "tokens", tokens
    ).to_pandas().assign(run_id="r1")


def test_bootstrap_ci_covers_the_truth_at_its_nominal_rate():
    rng = np.random.default_rng(7)
    truth = 2 / 7  # mean of Beta(2, 5)
    covered = [
        low <= truth <= high
        for low, high in (mean_ci(rng.beta(2, 5, size=40), resamples=400, seed=s)[1:] for s in range(300))
    ]
    assert 0.90 <= np.mean(covered) <= 0.98
    difference, low, high = difference_ci(rng.normal(1.0, 1, 200), rng.normal(0.0, 1, 200), resamples=400)
    assert low < 1.0 < high and difference == pytest.approx(1.0, abs=0.3)


def test_cohort_statistics_have_known_values():
    answers, tokens = tables(*synthetic_run())
    result = aggregate(tokens, answers, CONFIG)
    stats = result.cohort_stats.set_index(["grouping", "cohort", "target_class"])
    assert set(result.cohort_stats["target_class"]) == {"answer", "nodule"}  # token rows are not classes
    east, north = stats.loc[("site", "east", "answer")], stats.loc[("site", "north", "answer")]
    assert east["n_items"] == 20 and stats.loc[("all", "all", "answer")]["n_items"] == 60
    assert east["roi_hit_mean"] == 0.0 and north["roi_hit_mean"] == 1.0
    assert north["roi_share_ci_low"] <= north["roi_share_mean"] <= north["roi_share_ci_high"]
    regions = result.cohort_regions.set_index(["grouping", "cohort", "target_class", "region"])
    assert regions.loc[("site", "east", "answer", "border"), "mean"] == pytest.approx(1.0)
    assert regions.loc[("site", "north", "answer", "border"), "mean"] == pytest.approx(0.0)
    mean_map = np.asarray(east["mean_map"]).reshape(16, 16)  # common grid: each 8×8 cell is 2×2 here
    assert mean_map.sum() == pytest.approx(1.0, abs=1e-5)
    assert mean_map[2:-2, 2:].sum() == pytest.approx(0.0, abs=1e-6)  # nothing away from the top/left edges


def test_a_cohort_looking_at_the_border_is_flagged_and_the_others_are_not():
    answers, tokens = tables(*synthetic_run())
    flags = aggregate(tokens, answers, CONFIG).flag_table
    border = flags[flags["rule"] == "border_share_above_baseline"]
    assert set(border["cohort"]) == {"east"} and set(border["target_class"]) == {"answer", "nodule"}
    row = border[border["target_class"] == "answer"].iloc[0]
    assert row["threshold"] == 1.5 and row["value"] >= 1.5 * row["baseline"] and row["ci_low"] > 0.02
    assert row["method"] == "chefer" and "east" in row["message"] and "border" in row["message"]
    roi = flags[flags["rule"] == "roi_hit_rate_low"]
    assert set(roi["cohort"]) == {"east"}
    off = flags[flags["rule"] == "off_anatomy"]
    assert set(off["item_id"]) == {f"east-{i}" for i in range(20)}


def test_no_flags_when_every_site_looks_at_the_lungs():
    answers, tokens = tables(*synthetic_run(border_site="none"))
    flags = aggregate(tokens, answers, CONFIG).flag_table
    assert flags.empty


def test_aggregate_run_writes_tables_readable_by_glob(tmp_path):
    answers, tokens = synthetic_run()
    store = open_store(str(tmp_path))
    write_part(store, "answers", "r1", 0, answers)
    write_part(store, "tokens", "r1", 0, tokens)
    aggregate_run(str(tmp_path), "r1", CONFIG)
    flags = read_table(str(tmp_path), "flags", run_id="r1").to_pandas()
    assert "border_share_above_baseline" in set(flags["rule"]) and set(flags["run_id"]) == {"r1"}
    import duckdb

    rows = duckdb.sql(
        f"select cohort, mean from read_parquet('{tmp_path}/cohort_regions/**/*.parquet', hive_partitioning=true) "
        "where grouping = 'site' and target_class = 'answer' and region = 'border' order by cohort"
    ).fetchall()
    assert [cohort for cohort, _ in rows] == ["east", "north", "south"] and rows[0][1] == pytest.approx(1.0)


def test_run_versus_run_sees_the_shift():
    answers, tokens = tables(*synthetic_run(border_site="none"))
    before = item_level(join_targets(tokens, answers), GRID)
    answers_b, tokens_b = tables(*synthetic_run(border_site="north", seed=1))
    after = item_level(join_targets(tokens_b.assign(run_id="r2"), answers_b.assign(run_id="r2")), GRID)
    change = compare_runs(before, after, resamples=400).set_index(["target_class", "metric"])
    border = change.loc[("answer", "border")]
    assert border["n_items"] == 60 and border["difference"] == pytest.approx(1 / 3, abs=0.01)
    assert border["ci_low"] > 0.2 and (border["run_before"], border["run_after"]) == ("r1", "r2")


def _sample(tokens: pd.DataFrame) -> pd.DataFrame:
    records = tokens.astype(object).where(tokens.notna(), None).to_dict("records")
    return to_arrow("faithfulness", faithfulness_rows(records)).to_pandas().assign(run_id="r1")


def test_trust_flags_come_from_agreement_with_each_references_evidence_set():
    answers, tokens = tables(*synthetic_run())
    result = aggregate(tokens, answers, CONFIG, _sample(tokens))
    trust = result.flag_table[result.flag_table["rule"] == "explanations_not_trustworthy"]
    assert set(zip(trust["grouping"], trust["cohort"], trust["metric"], strict=True)) == {
        ("site", "east", "peak_in_occlusion_evidence"),
        ("site", "east", "peak_in_pixel_occlusion_evidence"),
    }  # chefer looks at the border at site east, where neither reference finds evidence
    assert set(trust["method"]) == {"chefer"} and "not trustworthy" in trust["message"].iloc[0]
    assert (trust["ci_high"] < 0.5).all() and "95% CI 0%–16%" in trust["message"].iloc[0]  # 0 of 20
    assert "evidence_relocated" not in set(result.flag_table["rule"])  # the references agree
    by_method = result.flag_table[result.flag_table["rule"] == "border_share_above_baseline"]["method"]
    assert "chefer (faithfulness sample)" in set(by_method)
    assert "occlusion (faithfulness sample)" not in set(by_method)
    summary = result.trust.set_index(["grouping", "cohort", "target_class", "method", "reference"])
    north = summary.loc[("site", "north", "answer", "chefer", "occlusion")]
    assert north["peak_in_evidence_rate"] == 1.0 and north["evidence_mass_mean"] > 0.75  # some mass: column 5
    assert north["n_checkable"] == north["n_items"] == 20 and north["peak_in_evidence_ci_low"] > 0.8
    east = summary.loc[("site", "east", "answer", "chefer", "pixel_occlusion")]
    assert east["peak_in_evidence_rate"] == 0.0 and east["evidence_mass_mean"] == pytest.approx(0.0, abs=1e-6)
    assert (
        summary.loc[("all", "all", "answer", "occlusion", "pixel_occlusion"), "peak_in_evidence_rate"] == 1.0
    )
    assert ("all", "all", "answer", "occlusion", "occlusion") not in summary.index  # no self-comparison


def test_items_whose_reference_has_no_evidence_are_not_counted_for_trust():
    """A "no finding" answer depends on no single image cell: the references' maps are noise of ~1e-5
    logits, and a method cannot agree or disagree with them."""
    answers, tokens = tables(*synthetic_run())
    faithfulness = _sample(tokens)
    noise = np.random.default_rng(0)
    east = faithfulness["item_id"].str.startswith("east") & faithfulness["method"].str.endswith("occlusion")
    faithfulness.loc[east, "image_relevance"] = pd.Series(
        [noise.normal(0, 1e-5, size=GRID[0] * GRID[1]).astype(np.float32) for _ in range(int(east.sum()))],
        index=faithfulness.index[east],
    )
    result = aggregate(tokens, answers, CONFIG, faithfulness)
    assert "explanations_not_trustworthy" not in set(result.flag_table["rule"])
    summary = result.trust.set_index(["grouping", "cohort", "target_class", "method", "reference"])
    east, north = (
        summary.loc[("site", "east", "answer", "chefer", "occlusion")],
        summary.loc[("site", "north", "answer", "chefer", "occlusion")],
    )
    assert east["n_items"] == 20 and east["n_checkable"] == 0 and np.isnan(east["peak_in_evidence_rate"])
    assert north["n_checkable"] == north["n_items"] == 20 and north["peak_in_evidence_rate"] == 1.0
    everyone = summary.loc[("all", "all", "answer", "chefer", "occlusion")]
    assert everyone["n_checkable"] == everyone["n_items"] - 20
    assert east["auc_gap"] == pytest.approx(1.0)  # removal curves need no reference: every item counts


def test_aggregate_without_groupings_gives_the_whole_run():
    answers, tokens = tables(*synthetic_run())
    result = aggregate(tokens, answers, AggregateConfig(stats=StatsConfig(resamples=100)))
    assert set(result.cohort_stats["grouping"]) == {"all"} and result.comparisons.empty
    # without a site column, the east site's border maps are still found: as a strategy cluster
    assert set(result.flag_table["rule"]) == {"off_anatomy", "strategy_cluster"}
    [cluster] = result.flag_table.loc[result.flag_table["rule"] == "strategy_cluster", "cohort"].astype(int)
    members = result.clusters.loc[result.clusters["cluster"] == cluster, "item_id"]
    assert set(members) == {f"east-{i}" for i in range(20)}
