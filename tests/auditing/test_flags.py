"""Flags that do not cry wolf: shares against a uniform map, maps without evidence left out, and one
false-discovery control over every share test of a run."""

from __future__ import annotations

import numpy as np
import pandas as pd

from auditing import aggregate
from auditing.flags import FlagThresholds, RaisedFlag
from auditing.rules import RuleInputs, shortcut_shares
from storage import to_arrow
from tests.auditing.synthetic import GRID, faithfulness_rows, synthetic_run, token_row
from tests.auditing.test_statistics import CONFIG, tables


def _with_east_maps(make_map) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The synthetic run with site east's answer maps replaced by `make_map(rng)`."""
    answers, tokens = synthetic_run(border_site="none")
    rng = np.random.default_rng(1)
    tokens = [
        token_row(t["item_id"], make_map(rng)) if t["item_id"].startswith("east") and t["target_kind"] == "answer" else t
        for t in tokens
    ]  # fmt: skip
    return tables(answers, tokens)


def test_near_uniform_maps_are_not_flagged_for_sitting_on_the_border():
    """A near-uniform map puts 28/64 = 44% of its mass on the border ring of an 8×8 grid: far above
    maps that stay in the lungs, but not a sign of reading the border."""

    def near_uniform(rng: np.random.Generator) -> np.ndarray:
        cell_map = rng.uniform(0.9, 1.1, size=GRID).astype(np.float32)
        cell_map[2:5, 2:4] += 0.3  # a little evidence in the lungs: not flat, some mass there
        return cell_map

    answers, tokens = _with_east_maps(near_uniform)
    result = aggregate(tokens, answers, CONFIG)
    east = result.comparisons.set_index(["cohort", "target_class", "metric"]).loc[
        ("east", "answer", "border")
    ]
    assert east["cohort_mean"] > 0.35 and east["rest_mean"] < 0.01 and east["p_above"] < 1e-6
    assert "border_share_above_baseline" not in set(result.flag_table["rule"])  # 40% is what uniform gives


def test_flat_maps_carry_no_evidence_and_are_left_out_of_the_share_rules():
    def flat_on_the_border(rng: np.random.Generator) -> np.ndarray:
        cell_map = np.full(GRID, 1.0, dtype=np.float32)
        cell_map[0, :] += rng.uniform(0.0, 0.6, size=GRID[1])  # slightly more on the top edge, but flat
        return cell_map

    answers, tokens = _with_east_maps(flat_on_the_border)
    result = aggregate(tokens, answers, CONFIG)
    east = result.items[
        (result.items["item_id"].str.startswith("east")) & (result.items["target_class"] == "answer")
    ]
    assert (east["entropy"] >= CONFIG.thresholds.flat_entropy).all()
    assert "border_share_above_baseline" not in set(result.flag_table["rule"])
    # with the flatness rule off, the same maps would raise the flag: the rule is what keeps it quiet
    loose = CONFIG.__class__(
        group_by=CONFIG.group_by,
        stats=CONFIG.stats,
        thresholds=FlagThresholds(flat_entropy=1.01, share_ratio=0.1),
    )
    assert "border_share_above_baseline" in set(aggregate(tokens, answers, loose).flag_table["rule"])


def test_sampled_items_whose_references_found_no_evidence_are_left_out_of_the_share_rules():
    answers, tokens = tables(*synthetic_run())  # site east's chefer maps sit on the border
    records = tokens.astype(object).where(tokens.notna(), None).to_dict("records")
    rows = faithfulness_rows(records)
    noise = np.random.default_rng(0)
    for row in rows:  # at site east neither reference finds anything: "no finding" answers
        if row["item_id"].startswith("east") and row["method"].endswith("occlusion"):
            row["image_relevance"] = noise.normal(0, 1e-5, size=GRID[0] * GRID[1]).astype(np.float32)
    faithfulness = to_arrow("faithfulness", rows).to_pandas().assign(run_id="r1")

    def answer_rules(flags: pd.DataFrame) -> set[str]:
        return set(flags.loc[flags["target_class"] == "answer", "rule"])

    flags = aggregate(tokens, answers, CONFIG, faithfulness).flag_table
    assert "border_share_above_baseline" not in answer_rules(flags)  # nothing to say where they looked
    assert "border_share_above_baseline" in answer_rules(aggregate(tokens, answers, CONFIG).flag_table)
    # the word target 'nodule' was not in the sample: its rule still speaks
    assert "border_share_above_baseline" in set(flags.loc[flags["target_class"] == "nodule", "rule"])


def _comparison(cohort: str, p_above: float, *, cohort_mean: float = 0.6, metric: str = "corners") -> dict:
    return {
        "run_id": "r1", "grouping": "site", "cohort": cohort, "target_class": "answer", "metric": metric,
        "cohort_mean": cohort_mean, "rest_mean": 0.1, "difference": cohort_mean - 0.1, "ci_low": 0.2,
        "ci_high": 0.6, "p_above": p_above, "n_cohort": 12, "n_rest": 40, "method": "chefer",
    }  # fmt: skip


def shortcut_flags(
    comparisons: pd.DataFrame, thresholds: FlagThresholds, uniform: dict[str, float]
) -> list[RaisedFlag]:
    inputs = RuleInputs(method="chefer", share_comparisons=comparisons, uniform_shares=uniform)
    return shortcut_shares.RULE.evaluate(inputs, thresholds)


def test_one_false_discovery_control_over_every_share_test_of_the_run():
    uniform = {"border": 0.4375, "corners": 0.111}
    alone = pd.DataFrame([_comparison("a", 0.02)])
    assert len(shortcut_flags(alone, FlagThresholds(), uniform)) == 1  # one test: p 0.02 ≤ 0.05
    # the same test among 19 null ones: its Benjamini–Hochberg q is 0.02 × 20 = 0.4, no flag
    family = pd.DataFrame([_comparison("a", 0.02)] + [_comparison(f"n{k}", 0.5 + k / 100) for k in range(19)])
    assert shortcut_flags(family, FlagThresholds(), uniform) == []
    strong = pd.DataFrame([_comparison("a", 1e-5)] + [_comparison(f"n{k}", 0.5 + k / 100) for k in range(19)])
    [flag] = shortcut_flags(strong, FlagThresholds(), uniform)
    assert flag.cohort == "a" and "q 0.0002 over the run's 20 share tests" in flag.message
    # a share that is no more than 1.5× what a uniform map puts there is not flagged, however significant
    weak = pd.DataFrame([_comparison("a", 1e-9, cohort_mean=0.6, metric="border")])
    assert shortcut_flags(weak, FlagThresholds(), uniform) == []
