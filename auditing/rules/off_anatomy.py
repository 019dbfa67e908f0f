"""`off_anatomy`: items whose whole-answer map leaves the lung fields (chest radiograph audits)."""

from __future__ import annotations

import re

from auditing.flags import FlagThresholds, RaisedFlag
from auditing.rules.base import Rule, RuleInputs, RuleName
from vocabulary.names import ANSWER, ITEM_SCOPE

OFF_ANATOMY_RULE = "off_anatomy"
# an answer whose first word is one of these asserts absence: its evidence is everywhere the finding is not
ABSENCE_WORDS = frozenset({"no", "none", "normal", "negative", "absent", "unremarkable", "clear"})


def asserts_absence(answer: object) -> bool:
    """Does the answer's first word deny a finding ("No.", "normal study", "None seen")?"""
    words = re.findall(r"[a-z]+", str(answer or "").lower())
    return bool(words) and words[0] in ABSENCE_WORDS


class OffAnatomyRule(Rule):
    """An answer that asserts presence is flagged below `off_anatomy_lung_share`; one that asserts absence
    below `off_anatomy_absence_ratio` × the lung share of a uniform map on its grid, because a diffuse
    map is what evidence of absence looks like."""

    names = (RuleName(OFF_ANATOMY_RULE, "Looks outside the lungs"),)
    scope = ITEM_SCOPE
    marks = "tokens"
    thresholds = ("off_anatomy_lung_share", "off_anatomy_absence_ratio")

    def evaluate(self, inputs: RuleInputs, thresholds: FlagThresholds) -> list[RaisedFlag]:
        items, method = inputs.items, inputs.method
        if items.empty:
            return []
        answers = items[items["target_class"] == ANSWER]
        flags = []
        for row in answers.itertuples(index=False):
            absence = asserts_absence(getattr(row, "answer", None))
            threshold = (
                thresholds.off_anatomy_absence_ratio
                * inputs.uniform_lung_shares[(int(row.grid_h), int(row.grid_w))]
                if absence
                else thresholds.off_anatomy_lung_share
            )
            if not row.lung_share < threshold:
                continue
            kind = ", relative to a uniform map for an answer of absence" if absence else ""
            flags.append(
                RaisedFlag(
                    run_id=row.run_id,
                    scope=self.scope,
                    rule=OFF_ANATOMY_RULE,
                    method=method,
                    target_class=ANSWER,
                    item_id=row.item_id,
                    metric="lung_share",
                    value=row.lung_share,
                    threshold=threshold,
                    n_items=1,
                    message=(
                        f"item {row.item_id}: only {row.lung_share:.0%} of the answer's {method} relevance lies "
                        f"in the lung zones (threshold {threshold:.0%}{kind})"
                    ),
                )
            )
        return flags

    def describe(self, thresholds: FlagThresholds) -> str:
        return (
            f"An item whose whole-answer map puts less than {thresholds.off_anatomy_lung_share:.0%} of its "
            f"relevance in the lung zones; for an answer that asserts absence (its first word "
            f"{', '.join(sorted(ABSENCE_WORDS))}), less than {thresholds.off_anatomy_absence_ratio:g}× what a "
            "uniform map puts there, since a diffuse map is what evidence of absence looks like."
        )


RULE = OffAnatomyRule()
