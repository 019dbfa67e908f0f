"""Comparisons: each cohort against the rest of its run, and one run against another."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from auditing.bootstrap import DEFAULT_RESAMPLES, difference_ci, mean_ci
from auditing.cohorts import cohort_labels
from auditing.load import SHARE_COLUMNS

COMPARED_METRICS = ("image_share", "entropy", "lung_share", *SHARE_COLUMNS)


def cohort_vs_rest(
    items: pd.DataFrame,
    grouping: str,
    *,
    metrics: Sequence[str] = COMPARED_METRICS,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    cohorts: Collection[str] | None = None,
) -> pd.DataFrame:
    """Difference (cohort − rest) of every metric with a bootstrap CI, per run and target class, and
    `p_above`: the one-sided Mann–Whitney U p-value (scipy; exact for small cohorts without ties)
    that the cohort's values are larger than the rest's. `cohorts`: test only these (the rest is still
    everything else)."""
    columns = grouping.split("+")
    rows = []
    for (run_id, target), frame in items.groupby(["run_id", "target_class"], sort=True):
        labels = cohort_labels(frame, columns)
        for cohort in sorted(labels.unique()):
            if cohorts is not None and cohort not in cohorts:
                continue
            inside = frame[labels == cohort]
            outside = frame[labels != cohort]
            if outside.empty:
                continue
            for metric in metrics:
                difference, low, high = difference_ci(
                    inside[metric], outside[metric], resamples=resamples, seed=seed
                )
                cohort_values, rest_values = inside[metric].dropna(), outside[metric].dropna()
                p_above = (
                    float(mannwhitneyu(cohort_values, rest_values, alternative="greater").pvalue)
                    if len(cohort_values) and len(rest_values)
                    else np.nan
                )
                rows.append(
                    {
                        "run_id": run_id,
                        "grouping": grouping,
                        "cohort": cohort,
                        "target_class": target,
                        "metric": metric.removeprefix("share_"),
                        "cohort_mean": float(cohort_values.mean()),  # NaN where none has a value
                        "rest_mean": float(rest_values.mean()),
                        "difference": difference,
                        "ci_low": low,
                        "ci_high": high,
                        "p_above": p_above,
                        "n_cohort": len(inside),
                        "n_rest": len(outside),
                    }
                )
    return pd.DataFrame(rows)


def compare_runs(
    before: pd.DataFrame,
    after: pd.DataFrame,
    *,
    metrics: Sequence[str] = COMPARED_METRICS,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """Paired per-item change (after − before) for items and target classes present in both runs."""
    keys = ["item_id", "target_class"]
    paired = before.merge(after, on=keys, suffixes=("_before", "_after"))
    rows = []
    for target, frame in paired.groupby("target_class", sort=True):
        for metric in metrics:
            change = frame[f"{metric}_after"].to_numpy(float) - frame[f"{metric}_before"].to_numpy(float)
            mean, low, high = mean_ci(change, resamples=resamples, seed=seed)
            rows.append(
                {
                    "run_before": frame["run_id_before"].iloc[0],
                    "run_after": frame["run_id_after"].iloc[0],
                    "target_class": target,
                    "metric": metric.removeprefix("share_"),
                    "mean_before": float(frame[f"{metric}_before"].mean()),
                    "mean_after": float(frame[f"{metric}_after"].mean()),
                    "difference": mean,
                    "ci_low": low,
                    "ci_high": high,
                    "n_items": len(frame),
                }
            )
    return pd.DataFrame(rows)
