"""`strategy_cluster`: a strategy cluster of whole-answer maps (`auditing.strategies`) that rests on the
image border, its corners or outside the lungs (volumes: outside the body) far more than the rest of its
answer class and than a uniform map would: a shortcut no manifest column names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from auditing.bootstrap import DEFAULT_RESAMPLES
from auditing.cohorts import ITEM_KEYS
from auditing.compare import cohort_vs_rest
from auditing.flags import FlagThresholds, RaisedFlag
from auditing.rules.base import Rule, RuleInputs, RuleName
from auditing.strategy_items import OUTSIDE_BODY_SHARE, STUDY, STUDY_COLUMNS, UNIFORM_OUTSIDE_BODY
from vocabulary.names import (
    ANSWER,
    BORDER,
    CLUSTER_SCOPE,
    CORNERS,
    LUNG_ZONES,
    OUTSIDE_BODY,
    OUTSIDE_LUNGS,
    SHORTCUT_REGIONS,
)

STRATEGY_RULE = "strategy_cluster"
STRATEGY_GROUPING = "strategy"  # the flags' grouping; their cohort is the cluster id
REGION_PHRASES = {
    BORDER: f"on {SHORTCUT_REGIONS[BORDER]}",
    CORNERS: f"on {SHORTCUT_REGIONS[CORNERS]}",
    OUTSIDE_LUNGS: "outside the lungs",
    OUTSIDE_BODY: "outside the body (a slice without anatomy counts whole)",
}


class StrategyClusterRule(Rule):
    names = (RuleName(STRATEGY_RULE, "A cluster of answers rests on the same wrong place"),)
    scope = CLUSTER_SCOPE
    marks = "clusters"
    thresholds = ("min_cluster_items", "share_ratio", "share_margin", "false_discovery_rate")

    def evaluate(self, inputs: RuleInputs, thresholds: FlagThresholds) -> list[RaisedFlag]:
        return strategy_cluster_flags(
            inputs.strategy_items,
            inputs.clusters,
            thresholds,
            inputs.uniform_shares,
            inputs.method,
            columns=inputs.metadata_columns,
            resamples=inputs.resamples,
        )

    def describe(self, thresholds: FlagThresholds) -> str:
        return (
            f"A cluster of at least {thresholds.min_cluster_items} whole-answer maps (strategy discovery) that "
            f"puts at least {thresholds.share_ratio:g}× as much of its mass on the image border, its corners or "
            "outside the lungs (volumes: outside the body) as the rest of its answer class and as a uniform "
            f"map, at least {thresholds.share_margin:.0%} more than the rest, with a false discovery rate of "
            f"{thresholds.false_discovery_rate:.0%} over every strategy test of the run."
        )


def strategy_cluster_flags(
    items: pd.DataFrame,
    clusters: pd.DataFrame,
    thresholds: FlagThresholds,
    uniform_shares: Mapping[str, float],
    method: str,
    *,
    columns: Sequence[str] = (),
    resamples: int = DEFAULT_RESAMPLES,
) -> list[RaisedFlag]:
    """`strategy_cluster` flags: clusters whose maps sit on the border, the corners or outside the lungs
    (volumes: outside the body) far more than the rest of their answer class, one flag per cluster (its
    strongest such region), strongest first.

    A cluster of at least `min_cluster_items` items is compared with the rest of its answer class and
    kind (single images, studies), or, where that rest is smaller (the whole class answers one way, as a
    model that says "yes" for every tag does), with the rest of the run's answers of its kind. Per
    (cluster, region): the one-sided Mann–Whitney p that the cluster's shares exceed the rest's, Benjamini–Hochberg over every test of the run. The
    clusters were formed from these maps, so p is optimistic: the effect-size guards carry the rule. The
    cluster's mean share must be at least `share_ratio` × the larger of the rest's and a uniform map's
    (`uniform_shares`; outside the lungs: 1 − a uniform map's lung share; outside the body: the mean of
    the cluster's `uniform_outside_body`, the test left out where that is unknown), and `share_margin`
    above the rest. The message names the manifest `columns` (few-valued metadata) the cluster lines up with.
    """
    if clusters.empty:
        return []
    shares = [f"share_{region}" for region in SHORTCUT_REGIONS]
    rows = items[[*ITEM_KEYS, *shares, "lung_share", *STUDY_COLUMNS, *columns]]
    frame = clusters.merge(rows, on=ITEM_KEYS)
    frame = frame.assign(
        strategy=frame["cluster"].astype(str),
        study_centre=[_centre(profile) for profile in frame["study_profile"]],
        **{f"share_{OUTSIDE_LUNGS}": 1.0 - frame["lung_share"]},
    )
    metrics = [*shares, f"share_{OUTSIDE_LUNGS}", OUTSIDE_BODY_SHARE]  # NaN where a kind has no such region
    # where the rest of its class is too small to compare with, a cluster meets the rest of the run;
    # either way, of its own kind (single images, studies)
    class_size = frame.groupby(["run_id", "answer_class", "kind"])["cluster"].transform("size")
    own_size = frame.groupby(["run_id", "cluster"])["cluster"].transform("size")
    frame["baseline"] = np.where(
        class_size - own_size >= thresholds.min_cluster_items, "its answer class", "the run's other answers"
    )
    frame["class_items"] = class_size
    per_cluster = frame.groupby(["run_id", "cluster"])
    for column in ("study_centre", UNIFORM_OUTSIDE_BODY):
        frame[column] = per_cluster[column].transform("mean")
    keys = frame[
        [
            "run_id",
            "strategy",
            "answer_class",
            "kind",
            "class_items",
            "baseline",
            "study_centre",
            UNIFORM_OUTSIDE_BODY,
        ]
    ].drop_duplicates(["run_id", "strategy"])
    keys = keys.rename(columns={"strategy": "cohort"})
    found = []
    for baseline, target_class in (
        ("its answer class", frame["answer_class"] + "/" + frame["kind"]),
        ("the run's other answers", frame["kind"]),
    ):
        mine = keys[keys["baseline"] == baseline]
        if mine.empty:
            continue
        tested = cohort_vs_rest(  # each cluster against one baseline only
            frame.assign(target_class=target_class),
            STRATEGY_GROUPING,
            metrics=metrics,
            resamples=resamples,
            cohorts=set(mine["cohort"]),
        )
        if len(tested):  # no test where a run is one cluster
            found.append(tested.merge(mine, on=["run_id", "cohort"]))
    if not found:
        return []
    tests = pd.concat(found, ignore_index=True)
    uniform = {
        **{region: uniform_shares[region] for region in SHORTCUT_REGIONS},
        OUTSIDE_LUNGS: 1.0 - sum(uniform_shares[zone] for zone in LUNG_ZONES),
    }
    tests["uniform"] = tests["metric"].map(uniform)
    # outside the body, a uniform map's share depends on the slices' bodies: the cluster's own studies'
    # (unknown for tokens written before `outside_body_cells`: untested, diffuse maps would pass for off-body)
    outside = tests["metric"] == OUTSIDE_BODY
    tests.loc[outside, "uniform"] = tests.loc[outside, UNIFORM_OUTSIDE_BODY]
    tests = tests[
        (tests["n_cohort"] >= thresholds.min_cluster_items)
        & tests["p_above"].notna()
        & tests["uniform"].notna()
    ].copy()
    if tests.empty:
        return []
    by_run = tests.groupby("run_id")["p_above"]
    tests["q"] = by_run.transform(lambda p: false_discovery_control(p, method="bh"))
    tests["family"] = by_run.transform("size")
    reference = np.fmax(tests["rest_mean"], tests["uniform"])
    tests["ratio"] = tests["cohort_mean"] / reference
    raised = tests[
        (tests["cohort_mean"] >= thresholds.share_ratio * reference)
        & (tests["cohort_mean"] - tests["rest_mean"] >= thresholds.share_margin)
        & (tests["q"] <= thresholds.false_discovery_rate)
    ]
    strongest = raised.sort_values("ratio", ascending=False).drop_duplicates(["run_id", "cohort"])
    return [
        _strategy_flag(row, method, thresholds, aligned_columns(frame, row.run_id, row.cohort, columns))
        for row in strongest.itertuples(index=False)
    ]


def aligned_columns(
    frame: pd.DataFrame, run_id: str, cluster: str, columns: Sequence[str], *, purity: float = 0.8
) -> list[str]:
    """The manifest columns the cluster lines up with: 'site=north (28 of 30; 4% of the rest)' where at
    least `purity` of the cluster's items share a value that at most half of the run's other items have."""
    run = frame[frame["run_id"] == run_id]
    inside = run["strategy"] == cluster
    found = []
    for column in columns:
        values = run[column].astype(str)
        top = values[inside].value_counts()
        if top.empty:
            continue
        value, count = top.index[0], int(top.iloc[0])
        rest_share = float((values[~inside] == value).mean()) if (~inside).any() else 0.0
        if count >= purity * inside.sum() and rest_share <= 0.5:
            found.append(f"{column}={value} ({count} of {int(inside.sum())}; {rest_share:.0%} of the rest)")
    return found


def _centre(profile: object) -> float:
    """Where along the study a profile's mass centres: 0 the first image or slice, 1 the last."""
    if profile is None:
        return np.nan
    profile = np.asarray(profile, dtype=np.float64)
    return float(np.dot(profile, (np.arange(len(profile)) + 0.5) / len(profile)) / profile.sum())


def _strategy_flag(row: tuple, method: str, thresholds: FlagThresholds, aligned: list[str]) -> RaisedFlag:
    answers = "answers" if row.answer_class == ANSWER else f"'{row.answer_class}' answers"
    if row.kind == STUDY:
        answers += " on studies"
    along = (
        ""
        if np.isnan(row.study_centre)
        else f"; along the studies their relevance centres at {row.study_centre:.0%} (0% the first image, "
        "100% the last)"
    )
    lines_up = (
        f"; the cluster lines up with {', '.join(aligned)}"
        if aligned
        else "; no manifest column names it: look at its members"
    )
    return RaisedFlag(
        run_id=row.run_id,
        scope=CLUSTER_SCOPE,
        rule=STRATEGY_RULE,
        method=method,
        grouping=STRATEGY_GROUPING,
        cohort=row.cohort,
        target_class=row.answer_class,
        metric=f"{row.metric}_share",
        value=row.cohort_mean,
        baseline=row.rest_mean,
        threshold=thresholds.share_ratio,
        ci_low=row.ci_low,
        ci_high=row.ci_high,
        n_items=row.n_cohort,
        message=(
            f"{row.n_cohort} of {row.class_items} {answers} form strategy cluster {row.cohort}, whose {method} maps put "
            f"{row.cohort_mean:.1%} of their mass {REGION_PHRASES[row.metric]}, against {row.rest_mean:.1%} in "
            f"{row.baseline} ({row.n_rest} items) and {row.uniform:.1%} for a uniform map (difference "
            f"{row.difference:+.1%}, 95% CI {row.ci_low:+.1%} to {row.ci_high:+.1%}; Mann–Whitney p "
            f"{row.p_above:.2g}, q {row.q:.2g} over the run's {row.family} strategy tests, optimistic since the "
            f"clusters were formed from these maps){along}{lines_up}; these answers may rest on something "
            "other than the anatomy they are about"
        ),
    )


RULE = StrategyClusterRule()
