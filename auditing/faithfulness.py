"""Summaries of the faithfulness sample: does each method's map agree with the occlusion reference?"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from auditing.cohorts import cohorts
from auditing.flags import FlagThresholds
from auditing.load import SHARE_COLUMNS, join_targets

AGREEMENT_COLUMNS = (
    "spearman_vs_occlusion",
    "top_cell_agrees",
    "morf_auc",
    "lerf_auc",
    "auc_gap",
    "randomization_spearman",
)


def faithfulness_items(
    faithfulness: pd.DataFrame, answers: pd.DataFrame, findings: Sequence[str] | None
) -> pd.DataFrame:
    """One row per (run, item, target class, method): region shares and agreement, averaged over images."""
    targets = join_targets(faithfulness, answers, findings=findings)
    targets["top_cell_agrees"] = targets["top_cell_agrees"].astype("float64")
    keys = ["run_id", "item_id", "target_class", "method"]
    numeric = [*SHARE_COLUMNS, "lung_share", *AGREEMENT_COLUMNS]
    descriptive = [
        c for c in targets.columns if c not in {*keys, *numeric, "image_relevance", "region_shares"}
    ]
    grouped = targets.groupby(keys, sort=False)
    return pd.concat([grouped[numeric].mean(), grouped[descriptive].first()], axis=1).reset_index()


def trust_summary(sample: pd.DataFrame, group_by: Sequence[str]) -> pd.DataFrame:
    """Per (run, cohort, target class, attention method): agreement with occlusion and removal AUCs."""
    rows = []
    for (run_id, target), frame in sample.groupby(["run_id", "target_class"], sort=True):
        for grouping, cohort, cohort_rows in cohorts(frame, group_by):
            for method, method_rows in cohort_rows.groupby("method", sort=True):
                rows.append(
                    {
                        "run_id": run_id,
                        "grouping": grouping,
                        "cohort": cohort,
                        "target_class": target,
                        "method": method,
                        "n_items": int(method_rows["item_id"].nunique()),
                        "spearman_median": float(method_rows["spearman_vs_occlusion"].median()),
                        "top_cell_rate": float(method_rows["top_cell_agrees"].mean()),
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
    attention = trust[(trust["method"] != "occlusion") & (trust["n_items"] >= thresholds.min_items)]
    for row in attention.itertuples(index=False):
        # the peak cell, not the rank correlation over every cell: most cells of an attention map are
        # near zero and occlusion's are noise where nothing is hidden, so Spearman is reported only
        if row.top_cell_rate < thresholds.trust_top_cell:
            flags.append(
                {
                    "run_id": row.run_id,
                    "scope": "cohort",
                    "rule": "explanations_not_trustworthy",
                    "method": row.method,
                    "grouping": row.grouping,
                    "cohort": row.cohort,
                    "target_class": row.target_class,
                    "metric": "top_cell_rate",
                    "value": row.top_cell_rate,
                    "threshold": thresholds.trust_top_cell,
                    "n_items": row.n_items,
                    "message": (
                        f"explanations not trustworthy for {row.grouping}={row.cohort} ('{row.target_class}'): "
                        f"the peak of {row.method} maps matches the occlusion reference's in {row.top_cell_rate:.0%} "
                        f"of {row.n_items} sampled items (threshold {thresholds.trust_top_cell:.0%}; median rank "
                        f"correlation {row.spearman_median:.2f}); the evidence may not travel where "
                        "attention shows"
                    ),
                }
            )
    return flags
