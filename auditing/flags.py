"""Flags: each raised by a named rule, with its threshold and the evidence in the row.

Rules over cohorts compare a cohort with the audit's baseline: the rest of its run, for the same
target class (a bootstrap CI of the difference, and a ratio). The rest rather than the whole run,
so that a large cohort cannot hide its own excess by raising the baseline.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.stats import false_discovery_control

from storage import FLAGS_SCHEMA, FlagRecord
from vocabulary.names import (
    ANSWER,
    COHORT_SCOPE,
    ITEM_SCOPE,
    OFF_ANATOMY_RULE,
    ROI_RULE,
    SHARE_RULES,
    SHORTCUT_REGIONS,
)

# the flags table's columns in its order; run_id is the part's path (hive partition), a column in memory
FLAG_COLUMNS = ("run_id", *FLAGS_SCHEMA.names)
_FLOAT_COLUMNS = tuple(field.name for field in FLAGS_SCHEMA if pa.types.is_float64(field.type))


@dataclass(frozen=True)
class FlagThresholds:
    """Thresholds of the flag rules; each flag row records the one that raised it."""

    # a cohort's border/corner share at least this × the rest's and × what a uniform map puts there ...
    share_ratio: float = 1.5
    share_margin: float = 0.02  # ... (cohort − rest) at least this ...
    # ... and significant: Benjamini–Hochberg q of the one-sided Mann–Whitney p at most this, over
    # every share test of the run (cohorts × targets × regions × methods)
    false_discovery_rate: float = 0.05
    # maps at least this flat (normalised entropy) carry no evidence of where the model looked, and
    # are left out of the share rules (so are sampled items whose references have no evidence)
    flat_entropy: float = 0.9
    min_items: int = 5
    # a strategy cluster smaller than this is neither tested nor flagged
    min_cluster_items: int = 10
    roi_hit_rate: float = 0.5  # pointing-game hit rate below this (the upper end of its Wilson interval)
    off_anatomy_lung_share: float = 0.35  # an item whose lung zones hold less than this share ...
    # ... but an answer asserting absence ("no", "normal") rests on everywhere the finding is not, so a
    # diffuse map is expected: it is flagged when its lung share is below this × a uniform map's
    off_anatomy_absence_ratio: float = 0.5
    # a method's peak lies in a reference's evidence set in fewer items than this, with 95% confidence
    # (the upper end of the Wilson interval below it)
    trust_peak_rate: float = 0.5
    # a reference's evidence set: cells whose drop is at least this fraction of its largest drop (and
    # above its noise floor) ...
    evidence_fraction: float = 0.5
    # ... and at least this many logits; below it the reference is noise and the item not checkable
    trust_min_reference_drop: float = 0.1
    # a longitudinal item barely looks at the prior when less than this share of its image relevance
    # lies on it; a cohort is flagged when more than half of its items do (Wilson interval above 1/2)
    prior_floor: float = 0.1


def cohort_key(row: tuple) -> dict[str, str]:
    """The run, grouping, cohort and target class of a cohort-level row (a frame's itertuples row)."""
    return {
        "run_id": row.run_id,
        "grouping": row.grouping,
        "cohort": row.cohort,
        "target_class": row.target_class,
    }


def cohort_phrase(grouping: str, cohort: str) -> str:
    """How a message names a cohort: "site=north", or "the whole run" for the ("all", "all") cohort."""
    return "the whole run" if grouping == "all" else f"{grouping}={cohort}"


def flag_row(
    *,
    rule: str,
    method: str,
    metric: str,
    value: float,
    threshold: float,
    message: str,
    n_items: int,
    run_id: str,
    scope: str = COHORT_SCOPE,
    grouping: str | None = None,
    cohort: str | None = None,
    target_class: str | None = None,
    item_id: str | None = None,
    baseline: float | None = None,
    ci_low: float | None = None,
    ci_high: float | None = None,
) -> dict:
    """One flag (a `storage.FlagRecord`, with the run id it belongs to), as a row for `as_frame`.

    Fields left None are left out of the row, so `as_frame` fills them as nulls exactly as for a
    rule that never sets them (a column no row sets stays an all-NaN float column, not None objects).
    """
    record = FlagRecord(
        scope=scope,
        rule=rule,
        method=method,
        grouping=grouping,
        cohort=cohort,
        target_class=target_class,
        item_id=item_id,
        metric=metric,
        value=value,
        baseline=baseline,
        threshold=threshold,
        ci_low=ci_low,
        ci_high=ci_high,
        n_items=n_items,
        message=message,
    )
    return {"run_id": run_id, **{key: field for key, field in record.to_row().items() if field is not None}}


def shortcut_flags(
    comparisons: pd.DataFrame, thresholds: FlagThresholds, uniform_shares: Mapping[str, float]
) -> list[dict]:
    """Cohorts whose border or corner share is far above the rest of the run and above what a uniform
    map puts there (shortcut reliance), significant over the whole family of share tests.

    `comparisons` holds `cohort_vs_rest` rows of every method the run checks (a `method` column);
    `uniform_shares` the share of each region under a uniform map. The Benjamini–Hochberg
    adjustment runs over all of the border and corner rows at once, so a run that tests many
    cohorts, targets and methods does not raise more false flags for it.
    """
    rows = comparisons[comparisons["metric"].isin(list(SHORTCUT_REGIONS))].copy()
    if rows.empty:
        return []
    tested = rows["p_above"].notna()
    rows["q"] = np.nan
    rows.loc[tested, "q"] = false_discovery_control(rows.loc[tested, "p_above"], method="bh")
    flags = []
    for row in rows.itertuples(index=False):
        baseline, uniform = row.rest_mean, uniform_shares[row.metric]
        if (
            row.n_cohort >= thresholds.min_items
            and row.cohort_mean >= thresholds.share_ratio * max(baseline, uniform)
            and row.cohort_mean - baseline >= thresholds.share_margin
            and row.q <= thresholds.false_discovery_rate
        ):
            flags.append(
                flag_row(
                    **cohort_key(row),
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
                        f"{row.method} maps of '{row.target_class}' in {cohort_phrase(row.grouping, row.cohort)} put "
                        f"{row.cohort_mean:.1%} of their mass on {SHORTCUT_REGIONS[row.metric]}, against "
                        f"{baseline:.1%} in the rest of the audit and {uniform:.1%} for a uniform map "
                        f"(difference {row.cohort_mean - baseline:+.1%}, 95% CI {row.ci_low:+.1%} to "
                        f"{row.ci_high:+.1%}; Mann–Whitney p {row.p_above:.2g}, q {row.q:.2g} over the run's "
                        f"{int(tested.sum())} share tests); the model may be reading markers or burned-in text"
                    ),
                )
            )
    return flags


def roi_flags(stats: pd.DataFrame, thresholds: FlagThresholds, method: str) -> list[dict]:
    """Cohorts whose maps' peak falls inside the ROI too rarely (pointing game)."""
    rows = stats[
        (stats["n_roi"] >= thresholds.min_items) & (stats["roi_hit_ci_high"] < thresholds.roi_hit_rate)
    ]
    return [
        flag_row(
            **cohort_key(row),
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
                f"{row.roi_hit_mean:.0%} of {cohort_phrase(row.grouping, row.cohort)} items (95% CI {row.roi_hit_ci_low:.0%}"
                f"–{row.roi_hit_ci_high:.0%}), below {thresholds.roi_hit_rate:.0%}"
            ),
        )
        for row in rows.itertuples(index=False)
    ]


# an answer whose first word is one of these asserts absence: its evidence is everywhere the finding is not
ABSENCE_WORDS = frozenset({"no", "none", "normal", "negative", "absent", "unremarkable", "clear"})


def asserts_absence(answer: object) -> bool:
    """Does the answer's first word deny a finding ("No.", "normal study", "None seen")?"""
    words = re.findall(r"[a-z]+", str(answer or "").lower())
    return bool(words) and words[0] in ABSENCE_WORDS


def off_anatomy_flags(
    items: pd.DataFrame,
    thresholds: FlagThresholds,
    method: str,
    uniform_lung: Mapping[tuple[int, int], float],
) -> list[dict]:
    """Items whose whole-answer map leaves the lung fields (chest radiograph audits).

    An answer that asserts presence is flagged below `off_anatomy_lung_share`; one that asserts absence
    below `off_anatomy_absence_ratio` × the lung share of a uniform map on its grid (`uniform_lung`),
    because a diffuse map is what evidence of absence looks like.
    """
    answers = items[items["target_class"] == ANSWER]
    flags = []
    for row in answers.itertuples(index=False):
        absence = asserts_absence(getattr(row, "answer", None))
        threshold = (
            thresholds.off_anatomy_absence_ratio * uniform_lung[(int(row.grid_h), int(row.grid_w))]
            if absence
            else thresholds.off_anatomy_lung_share
        )
        if not row.lung_share < threshold:
            continue
        kind = ", relative to a uniform map for an answer of absence" if absence else ""
        flags.append(
            flag_row(
                run_id=row.run_id,
                scope=ITEM_SCOPE,
                rule=OFF_ANATOMY_RULE,
                method=method,
                target_class=ANSWER,
                item_id=row.item_id,
                metric="lung_share",
                value=row.lung_share,
                threshold=threshold,
                n_items=1,
                message=(
                    f"item {row.item_id}: only {row.lung_share:.0%} of the answer's {method} relevance lies in "
                    f"the lung zones (threshold {threshold:.0%}{kind})"
                ),
            )
        )
    return flags


def as_frame(flags: list[dict]) -> pd.DataFrame:
    """Flags in the flags table's column order, run_id first (missing fields as nulls)."""
    frame = pd.DataFrame(flags, columns=list(FLAG_COLUMNS))
    return frame.astype(dict.fromkeys(_FLOAT_COLUMNS, float))
