"""`off_anatomy`: items whose whole-answer map leaves the lung fields (chest radiograph audits)."""

from __future__ import annotations

import re

import pandas as pd

from auditing.flags import FlagThresholds, RaisedFlag
from auditing.rules.base import Rule, RuleInputs, RuleName
from vocabulary.names import ABSENT, ANSWER, ITEM_SCOPE

OFF_ANATOMY_RULE = "off_anatomy"
# an answer without mentions (a run written before the mentions table, or nothing the reader knows)
# asserts absence when its first word is one of these
ABSENCE_WORDS = frozenset({"no", "none", "normal", "negative", "absent", "unremarkable", "clear"})


def asserts_absence(answer: object) -> bool:
    """Does the answer's first word deny a finding ("No.", "normal study", "None seen")?"""
    words = re.findall(r"[a-z]+", str(answer or "").lower())
    return bool(words) and words[0] in ABSENCE_WORDS


def absence_by_item(mentions: pd.DataFrame) -> dict[tuple[str, str], bool]:
    """Per (run, item) with mentions: does the answer assert only absences ("Based on the X-ray provided,
    there is no clear evidence of pneumonia")? One present or uncertain finding makes it an answer of
    presence: its evidence is somewhere."""
    if mentions.empty:
        return {}
    absent = (mentions["assertion"] == ABSENT).groupby([mentions["run_id"], mentions["item_id"]]).all()
    return {key: bool(value) for key, value in absent.items()}


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
        read = absence_by_item(inputs.mentions)
        flags = []
        for row in answers.itertuples(index=False):
            absence = read.get((row.run_id, row.item_id))
            if absence is None:
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
            "relevance in the lung zones; for an answer that asserts absence (every finding it mentions is "
            f"absent; an answer without mentions: its first word {', '.join(sorted(ABSENCE_WORDS))}), less "
            f"than {thresholds.off_anatomy_absence_ratio:g}× what a uniform map puts there, since a diffuse "
            "map is what evidence of absence looks like."
        )


RULE = OffAnatomyRule()
