"""`explanations_not_trustworthy` and `evidence_relocated`: cohorts whose maps confidently disagree with
a perturbation reference on the faithfulness sample (`cohort_trust`), and the standing of every trust
row, which the report words."""

from __future__ import annotations

from enum import Enum
from typing import Any

from auditing.evidence import is_number
from auditing.flags import FlagThresholds, RaisedFlag, cohort_key, cohort_phrase
from auditing.rules.base import Rule, RuleInputs, RuleName
from auditing.trust import PIXEL_REFERENCE, TOKEN_REFERENCE
from vocabulary.names import COHORT_SCOPE

UNTRUSTWORTHY_RULE = "explanations_not_trustworthy"
RELOCATED_RULE = "evidence_relocated"


def _evidence_text(row) -> str:
    return (
        f"in {row.peak_in_evidence_rate:.0%} of {row.n_checkable} sampled items where the reference has "
        f"evidence (95% CI {row.peak_in_evidence_ci_low:.0%}–{row.peak_in_evidence_ci_high:.0%}; mean mass "
        f"there {row.evidence_mass_mean:.0%})"
    )


class TrustRule(Rule):
    """A cohort with at least `min_items` checkable sampled items where the upper end of the 95% interval
    of a method's peak-in-evidence rate against a reference is below `trust_peak_rate`:

    - `explanations_not_trustworthy` for chefer, rollout or raw attention against any reference;
    - `evidence_relocated` when token occlusion disagrees with pixel occlusion: the vision tower moved
      the evidence before the language model, so no map computed at the language model can be trusted
      to show where the evidence is in the image (the method checked against pixel occlusion then
      is flagged too).
    """

    names = (
        RuleName(UNTRUSTWORTHY_RULE, "Heatmaps not trustworthy"),
        RuleName(RELOCATED_RULE, "Evidence moved by the vision tower"),
    )
    scope = COHORT_SCOPE
    marks = "cohort_trust"
    thresholds = (
        "min_items",
        "trust_peak_rate",
        "evidence_fraction",
        "trust_min_reference_drop",
        "randomization_doubt",
    )

    def evaluate(self, inputs: RuleInputs, thresholds: FlagThresholds) -> list[RaisedFlag]:
        trust = inputs.trust
        if trust.empty:
            return []
        confident = trust[
            (trust["n_checkable"] >= thresholds.min_items)
            & (trust["peak_in_evidence_ci_high"] < thresholds.trust_peak_rate)
            & (trust["method"] != PIXEL_REFERENCE)
        ]
        flags = []
        for row in confident.itertuples(index=False):
            evidence = _evidence_text(row)
            where = cohort_phrase(row.grouping, row.cohort)
            if row.method == TOKEN_REFERENCE:
                rule = RELOCATED_RULE
                message = (
                    f"evidence relocated before the language model for {where} ('{row.target_class}'): the "
                    f"token-occlusion peak lies in the pixel-occlusion evidence {evidence}. The vision tower "
                    "moves the evidence between image positions, so chefer, rollout, raw attention and token "
                    "occlusion all point where the evidence arrived, not where it is in the image"
                )
            else:
                rule = UNTRUSTWORTHY_RULE
                message = (
                    f"explanations not trustworthy for {where} ('{row.target_class}'): the peak of {row.method} "
                    f"maps lies in the {row.reference} reference's evidence {evidence}; the evidence does not "
                    "travel where this map shows"
                )
            flags.append(
                RaisedFlag(
                    **cohort_key(row),
                    scope=self.scope,
                    rule=rule,
                    method=row.method,
                    metric=f"peak_in_{row.reference}_evidence",
                    value=row.peak_in_evidence_rate,
                    threshold=thresholds.trust_peak_rate,
                    ci_low=row.peak_in_evidence_ci_low,
                    ci_high=row.peak_in_evidence_ci_high,
                    n_items=row.n_checkable,
                    message=message,
                )
            )
        return flags

    def describe(self, thresholds: FlagThresholds) -> str:
        return (
            f"On the faithfulness sample, a cohort with at least {thresholds.min_items} checkable items where "
            f"a method's peak lies in a reference's evidence in fewer than {thresholds.trust_peak_rate:.0%} of "
            "them (the upper end of the 95% interval); when token occlusion itself misses pixel occlusion's "
            "evidence, the vision tower moved the evidence before the language model."
        )


class Standing(Enum):
    """Where one cohort × method × reference trust row stands, in the order it is decided."""

    REFERENCE = "reference"  # pixel occlusion itself: the others are checked against it
    RELOCATED = "relocated"  # raised evidence_relocated
    NOT_TRUSTWORTHY = "not trustworthy"  # raised explanations_not_trustworthy
    TOO_FEW = "too few"  # fewer than min_items sampled items
    NOT_CHECKABLE = "not checkable"  # fewer than min_items items where the reference has evidence
    UNDECIDED = "undecided"  # the interval of its agreement reaches below trust_peak_rate
    DOUBTFUL = "doubtful"  # agrees, but barely changes when the model is scrambled
    TRUSTWORTHY = "trustworthy"


def trust_standing(row: Any, raised: str | None, thresholds: FlagThresholds) -> Standing:
    """The standing of a `cohort_trust` row (a pandas Series) from the rule its flags raised on it
    (`raised`, None where none), its numbers and the thresholds its aggregation recorded."""
    if row["method"] == PIXEL_REFERENCE:
        return Standing.REFERENCE
    if raised == RELOCATED_RULE:
        return Standing.RELOCATED
    if raised is not None:
        return Standing.NOT_TRUSTWORTHY
    if not is_number(row["n_items"]) or row["n_items"] < thresholds.min_items:
        return Standing.TOO_FEW
    checkable = row.get("n_checkable", row["n_items"])  # tables aggregated before it existed: all
    if is_number(checkable) and checkable < thresholds.min_items:
        return Standing.NOT_CHECKABLE
    low = row.get("peak_in_evidence_ci_low")
    if is_number(low) and low < thresholds.trust_peak_rate:
        return Standing.UNDECIDED
    randomization = row.get("randomization_spearman")
    if is_number(randomization) and randomization >= thresholds.randomization_doubt:
        return Standing.DOUBTFUL
    return Standing.TRUSTWORTHY


RULE = TrustRule()
