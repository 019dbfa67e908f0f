"""`roi_hit_rate_low`: cohorts whose maps' peak falls inside the marked region of interest too rarely
(the pointing game)."""

from __future__ import annotations

from auditing.flags import FlagThresholds, RaisedFlag, cohort_key, cohort_phrase
from auditing.rules.base import Rule, RuleInputs, RuleName
from vocabulary.names import COHORT_SCOPE

ROI_RULE = "roi_hit_rate_low"


class RoiRule(Rule):
    names = (RuleName(ROI_RULE, "Misses the marked region of interest"),)
    scope = COHORT_SCOPE
    marks = "cohort_stats"
    thresholds = ("min_items", "roi_hit_rate")

    def evaluate(self, inputs: RuleInputs, thresholds: FlagThresholds) -> list[RaisedFlag]:
        stats, method = inputs.stats, inputs.method
        if stats.empty:
            return []
        rows = stats[
            (stats["n_roi"] >= thresholds.min_items) & (stats["roi_hit_ci_high"] < thresholds.roi_hit_rate)
        ]
        return [
            RaisedFlag(
                **cohort_key(row),
                scope=self.scope,
                rule=ROI_RULE,
                method=method,
                metric="roi_hit",
                value=row.roi_hit_mean,
                threshold=thresholds.roi_hit_rate,
                ci_low=row.roi_hit_ci_low,
                ci_high=row.roi_hit_ci_high,
                n_items=row.n_roi,
                message=(
                    f"the peak of {method} maps of '{row.target_class}' falls inside the region of interest in "
                    f"{row.roi_hit_mean:.0%} of {cohort_phrase(row.grouping, row.cohort)} items (95% CI "
                    f"{row.roi_hit_ci_low:.0%}–{row.roi_hit_ci_high:.0%}), below {thresholds.roi_hit_rate:.0%}"
                ),
            )
            for row in rows.itertuples(index=False)
        ]

    def describe(self, thresholds: FlagThresholds) -> str:
        return (
            f"A cohort of at least {thresholds.min_items} items with a marked region of interest whose maps' "
            f"peak falls inside it in fewer than {thresholds.roi_hit_rate:.0%} of its items (the upper end of "
            "the rate's 95% Wilson interval)."
        )


RULE = RoiRule()
