"""`change_ignores_prior`: a cohort's longitudinal answers mostly barely look at the prior."""

from __future__ import annotations

from auditing.flags import FlagThresholds, RaisedFlag, cohort_key, cohort_phrase
from auditing.rules.base import Rule, RuleInputs, RuleName
from vocabulary.names import COHORT_SCOPE

PRIOR_RULE = "change_ignores_prior"


class PriorRule(Rule):
    """A cohort of at least `min_items` longitudinal items (a prior and a current image) more than half of
    which, with 95% confidence (the rate's Wilson interval above one half), put less than `prior_floor`
    of their image relevance on the prior (`cohort_studies` counts them)."""

    names = (RuleName(PRIOR_RULE, "Answers about change barely look at the prior"),)
    scope = COHORT_SCOPE
    marks = "cohort_studies"
    thresholds = ("min_items", "prior_floor")

    def evaluate(self, inputs: RuleInputs, thresholds: FlagThresholds) -> list[RaisedFlag]:
        studies, method = inputs.studies, inputs.method
        if studies.empty:
            return []
        rows = studies[
            (studies["n_longitudinal_items"] >= thresholds.min_items) & (studies["barely_prior_ci_low"] > 0.5)
        ]
        return [
            RaisedFlag(
                **cohort_key(row),
                scope=self.scope,
                rule=PRIOR_RULE,
                method=method,
                metric="barely_prior_rate",
                value=row.barely_prior_rate,
                threshold=thresholds.prior_floor,
                ci_low=row.barely_prior_ci_low,
                ci_high=row.barely_prior_ci_high,
                n_items=row.n_longitudinal_items,
                message=(
                    f"{row.n_barely_prior} of {row.n_longitudinal_items} longitudinal items of "
                    f"{cohort_phrase(row.grouping, row.cohort)} put less than {thresholds.prior_floor:.0%} of "
                    f"the '{row.target_class}' {method} relevance on the prior (95% CI "
                    f"{row.barely_prior_ci_low:.0%}–{row.barely_prior_ci_high:.0%}; mean prior share "
                    f"{row.prior_share_mean:.0%}): answers about change that barely look at the prior"
                ),
            )
            for row in rows.itertuples(index=False)
        ]

    def describe(self, thresholds: FlagThresholds) -> str:
        return (
            f"A cohort of at least {thresholds.min_items} longitudinal items (a prior and a current image) "
            f"more than half of which, with 95% confidence, put less than {thresholds.prior_floor:.0%} of "
            "their image relevance on the prior: an answer about change must compare the two."
        )


RULE = PriorRule()
