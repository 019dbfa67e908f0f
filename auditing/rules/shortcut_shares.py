"""`border_share_above_baseline` and `corners_share_above_baseline`: cohorts whose maps put far more of
their mass on the image border or corners than the rest of the run and a uniform map (shortcut reliance).

One rule raising both names, since one Benjamini–Hochberg adjustment runs over every share test of the
run at once (cohorts × targets × both regions × methods): a run that tests many does not raise more
false flags for it.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import false_discovery_control

from auditing.flags import FlagThresholds, RaisedFlag, cohort_key, cohort_phrase
from auditing.rules.base import Rule, RuleInputs, RuleName
from vocabulary.names import BORDER, COHORT_SCOPE, CORNERS, SHORTCUT_REGIONS

BORDER_SHARE_RULE = f"{BORDER}_share_above_baseline"
CORNERS_SHARE_RULE = f"{CORNERS}_share_above_baseline"
SHARE_RULES = {BORDER: BORDER_SHARE_RULE, CORNERS: CORNERS_SHARE_RULE}  # region → its rule


class ShortcutShareRule(Rule):
    """`share_comparisons` holds `cohort_vs_rest` rows of every method the run checks (a `method`
    column). A cohort of at least `min_items` items is flagged where its mean share is at least
    `share_ratio` × the larger of the rest's and a uniform map's, `share_margin` above the rest, and
    its q at most `false_discovery_rate`."""

    names = (
        RuleName(BORDER_SHARE_RULE, "Looks at the image border", metric=BORDER),
        RuleName(CORNERS_SHARE_RULE, "Looks at the image corners (markers, burned-in tags)", metric=CORNERS),
    )
    scope = COHORT_SCOPE
    marks = "cohort_comparisons"
    thresholds = ("min_items", "share_ratio", "share_margin", "false_discovery_rate", "flat_entropy")

    def evaluate(self, inputs: RuleInputs, thresholds: FlagThresholds) -> list[RaisedFlag]:
        comparisons = inputs.share_comparisons
        if comparisons.empty:
            return []
        rows = comparisons[comparisons["metric"].isin(list(SHORTCUT_REGIONS))].copy()
        if rows.empty:
            return []
        tested = rows["p_above"].notna()
        rows["q"] = np.nan
        rows.loc[tested, "q"] = false_discovery_control(rows.loc[tested, "p_above"], method="bh")
        flags = []
        for row in rows.itertuples(index=False):
            baseline, uniform = row.rest_mean, inputs.uniform_shares[row.metric]
            if not (
                row.n_cohort >= thresholds.min_items
                and row.cohort_mean >= thresholds.share_ratio * max(baseline, uniform)
                and row.cohort_mean - baseline >= thresholds.share_margin
                and row.q <= thresholds.false_discovery_rate
            ):
                continue
            flags.append(
                RaisedFlag(
                    **cohort_key(row),
                    scope=self.scope,
                    rule=SHARE_RULES[row.metric],
                    method=row.method,
                    metric=f"{row.metric}_share",
                    value=row.cohort_mean,
                    baseline=baseline,
                    threshold=thresholds.share_ratio,
                    ci_low=row.ci_low,
                    ci_high=row.ci_high,
                    n_items=row.n_cohort,
                    message=(
                        f"{row.method} maps of '{row.target_class}' in {cohort_phrase(row.grouping, row.cohort)} "
                        f"put {row.cohort_mean:.1%} of their mass on {SHORTCUT_REGIONS[row.metric]}, against "
                        f"{baseline:.1%} in the rest of the audit and {uniform:.1%} for a uniform map "
                        f"(difference {row.cohort_mean - baseline:+.1%}, 95% CI {row.ci_low:+.1%} to "
                        f"{row.ci_high:+.1%}; Mann–Whitney p {row.p_above:.2g}, q {row.q:.2g} over the run's "
                        f"{int(tested.sum())} share tests); the model may be reading markers or burned-in text"
                    ),
                )
            )
        return flags

    def describe(self, thresholds: FlagThresholds) -> str:
        return (
            f"A cohort of at least {thresholds.min_items} items whose maps put at least "
            f"{thresholds.share_ratio:g}× as much of their mass on the image border (or corners) as the rest of "
            f"the run and as a uniform map, at least {thresholds.share_margin:.0%} more than the rest, with a "
            f"false discovery rate of {thresholds.false_discovery_rate:.0%} over every share test of the run; "
            f"flat maps (normalised entropy at least {thresholds.flat_entropy:g}) carry no evidence and are "
            "left out."
        )


RULE = ShortcutShareRule()
