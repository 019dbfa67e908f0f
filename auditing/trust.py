"""Trust in the maps: the trust summary and trust flags over the faithfulness sample (does each method's
map agree with the occlusion reference?)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from auditing.cohorts import cohorts
from auditing.flags import FlagThresholds, cohort_key, flag_row
from auditing.load import SHARE_COLUMNS, join_targets
from storage import FAITHFULNESS_SCHEMA, TOKENS_SCHEMA

# the faithfulness table's own measures: its columns beyond those it shares with tokens, less the timing
AGREEMENT_COLUMNS = tuple(
    name for name in FAITHFULNESS_SCHEMA.names if name not in TOKENS_SCHEMA.names and name != "seconds"
)


def faithfulness_items(
    faithfulness: pd.DataFrame, answers: pd.DataFrame, findings: Sequence[str] | None
) -> pd.DataFrame:
    """One row per (run, item, target class, method): region shares and agreement, averaged over images,
    and `reference_peak`, the occlusion reference's largest drop for that item and target."""
    targets = join_targets(faithfulness, answers, findings=findings)
    targets["top_cell_agrees"] = targets["top_cell_agrees"].astype("float64")
    keys = ["run_id", "item_id", "target_class", "method"]
    numeric = [*SHARE_COLUMNS, "lung_share", *AGREEMENT_COLUMNS]
    descriptive = [
        c for c in targets.columns if c not in {*keys, *numeric, "image_relevance", "region_shares"}
    ]
    grouped = targets.groupby(keys, sort=False)
    items = pd.concat([grouped[numeric].mean(), grouped[descriptive].first()], axis=1).reset_index()
    return items.join(reference_peaks(targets), on=keys[:3])


def reference_peaks(targets: pd.DataFrame) -> pd.Series:
    """`reference_peak` per (run, item, target class): the largest drop of the target's score (logits)
    when one image token is occluded, over the item's images. Near 0 when the answer depends on no
    single image cell (typically "no finding" answers): occlusion's map is then noise and has no peak
    that another map could agree with."""
    reference = targets[targets["method"] == "occlusion"]
    peaks = pd.Series(
        [float(np.max(cells)) if len(cells) else np.nan for cells in reference["image_relevance"]],
        index=reference.index,
        name="reference_peak",
    )
    return peaks.groupby([reference["run_id"], reference["item_id"], reference["target_class"]]).max()


def trust_summary(sample: pd.DataFrame, group_by: Sequence[str], min_reference_drop: float) -> pd.DataFrame:
    """Per (run, cohort, target class, attention method): agreement with occlusion and removal AUCs.

    Agreement with occlusion (rank correlation, peak cell) is taken over the `n_checkable` items whose
    occlusion reference has a peak (`reference_peak` ≥ `min_reference_drop`); removal curves and
    randomisation need no reference and cover every sampled item.
    """
    rows = []
    for (run_id, target), frame in sample.groupby(["run_id", "target_class"], sort=True):
        for grouping, cohort, cohort_rows in cohorts(frame, group_by):
            for method, method_rows in cohort_rows.groupby("method", sort=True):
                checkable = method_rows[method_rows["reference_peak"] >= min_reference_drop]
                rows.append(
                    {
                        "run_id": run_id,
                        "grouping": grouping,
                        "cohort": cohort,
                        "target_class": target,
                        "method": method,
                        "n_items": int(method_rows["item_id"].nunique()),
                        "n_checkable": int(checkable["item_id"].nunique()),
                        "spearman_median": float(checkable["spearman_vs_occlusion"].median()),
                        "top_cell_rate": float(checkable["top_cell_agrees"].mean()),
                        "morf_auc": float(method_rows["morf_auc"].mean()),
                        "lerf_auc": float(method_rows["lerf_auc"].mean()),
                        "auc_gap": float(method_rows["auc_gap"].mean()),
                        "randomization_spearman": float(method_rows["randomization_spearman"].median()),
                    }
                )
    return pd.DataFrame(rows)


def trust_flags(trust: pd.DataFrame, thresholds: FlagThresholds) -> list[dict]:
    """Cohorts where an attention method's maps disagree with occlusion: explanations not trustworthy."""
    flags = []
    attention = trust[(trust["method"] != "occlusion") & (trust["n_checkable"] >= thresholds.min_items)]
    for row in attention.itertuples(index=False):
        # the peak cell, not the rank correlation over every cell: most cells of an attention map are
        # near zero and occlusion's are noise where nothing is hidden, so Spearman is reported only
        if row.top_cell_rate < thresholds.trust_top_cell:
            flags.append(
                flag_row(
                    **cohort_key(row),
                    rule="explanations_not_trustworthy",
                    method=row.method,
                    metric="top_cell_rate",
                    value=row.top_cell_rate,
                    threshold=thresholds.trust_top_cell,
                    n_items=row.n_checkable,
                    message=(
                        f"explanations not trustworthy for {row.grouping}={row.cohort} ('{row.target_class}'): "
                        f"the peak of {row.method} maps matches the occlusion reference's in {row.top_cell_rate:.0%} "
                        f"of {row.n_checkable} sampled items where occlusion has a peak (threshold {thresholds.trust_top_cell:.0%}; median rank "
                        f"correlation {row.spearman_median:.2f}); the evidence may not travel where "
                        "attention shows"
                    ),
                )
            )
    return flags
