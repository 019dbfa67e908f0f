"""Studies: where along a volume the maps sit, and whether answers about change look at the prior.

A study item has several images in one prompt: a volume's sampled slices, or a longitudinal pair
("prior", "current"), or several views. The tokens table gives each image's `study_share` (its share
of the target's positive image relevance over the whole prompt), its label and, for slices, its
position in the ordered volume. From those, per (item, target class):

- `slice_position`: the mass-weighted mean position along the volume (0 the first slice, 1 the last);
- `outside_body`: the share of the relevance outside the body (mass-weighted over slices);
- `slice_profile`: the relevance per tenth of the volume (`PROFILE_BINS` bins);
- `prior_share`: the share on images labelled "prior…" (longitudinal items only).

Cohort rows summarise them with bootstrap intervals and count the longitudinal items that barely look
at the prior (prior share below `prior_floor`), which the `auditing.rules.prior` rule reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from auditing.bootstrap import mean_ci
from auditing.cohorts import ITEM_KEYS, StatsConfig, cohorts
from auditing.evidence import wilson_interval
from auditing.flags import FlagThresholds
from storage import PROFILE_BINS

PRIOR_LABEL = "prior"  # images whose label starts with this (case-insensitive) are the prior


def is_prior(label: object) -> bool:
    return isinstance(label, str) and label.strip().lower().startswith(PRIOR_LABEL)


def position_profile(positions: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Shares summed per tenth of the study (`PROFILE_BINS` bins; positions in 0..1)."""
    bins = np.minimum((positions * PROFILE_BINS).astype(int), PROFILE_BINS - 1)
    return np.bincount(bins, weights=shares, minlength=PROFILE_BINS).astype(np.float32)


def volume_slices(group: pd.DataFrame) -> pd.Series:
    """Which of one item's image rows are slices of a volume (`slice_index` set, `n_slices` > 1)."""
    return group["slice_index"].notna() & group["n_slices"].fillna(0).gt(1)


def slice_positions(group: pd.DataFrame) -> np.ndarray:
    """Each slice row's position along its ordered volume: 0 the first slice, 1 the last."""
    return (group["slice_index"] / (group["n_slices"] - 1)).to_numpy(float)


def outside_body(group: pd.DataFrame, weights: np.ndarray) -> float:
    """The `weights`-weighted mean of the slices' `outside_body_share` over those where it is known;
    NaN where none is (or they weigh nothing)."""
    outside = group["outside_body_share"].to_numpy(dtype=np.float64)
    known = ~np.isnan(outside)
    if not known.any() or weights[known].sum() <= 0:
        return np.nan
    return float((outside * weights)[known].sum() / weights[known].sum())


def study_items(targets: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, item, target class) of study items, with their study metrics; the item's
    metadata columns come along (first image's)."""
    if "study_share" not in targets.columns or targets.empty:
        return pd.DataFrame(columns=[*ITEM_KEYS, "slice_position", "outside_body", "prior_share"])
    rows = []
    for key, group in targets.groupby(ITEM_KEYS, sort=False):
        shares = group["study_share"].fillna(0.0).to_numpy(dtype=np.float64)
        slices = volume_slices(group)
        labelled_prior = group["image_label"].map(is_prior)
        if not slices.any() and not labelled_prior.any():
            continue
        row = dict(zip(ITEM_KEYS, key, strict=True)) | group.iloc[0].to_dict()
        row |= {
            "slice_position": np.nan,
            "outside_body": np.nan,
            "slice_profile": None,
            "prior_share": np.nan,
        }
        if slices.any():
            positions = slice_positions(group[slices])
            weights = shares[slices.to_numpy()]
            total = weights.sum()
            if total > 0:
                row["slice_position"] = float((positions * weights).sum() / total)
                row["slice_profile"] = position_profile(positions, weights / total)
                row["outside_body"] = outside_body(group[slices], weights)
        if labelled_prior.any() and shares.sum() > 0:
            row["prior_share"] = float(shares[labelled_prior.to_numpy()].sum() / shares.sum())
        rows.append(row)
    return pd.DataFrame(rows)


def cohort_studies(
    items: pd.DataFrame, group_by: Sequence[str], config: StatsConfig, thresholds: FlagThresholds
) -> pd.DataFrame:
    """Per (run, grouping, cohort, target class) of `group_by`: the `cohort_studies` table's rows."""
    if items.empty:
        return pd.DataFrame()
    summaries = []
    for (run_id, target), run_items in items.groupby(["run_id", "target_class"], sort=True):
        for grouping, cohort, rows in cohorts(run_items, group_by):
            volumes = rows[rows["slice_position"].notna()]
            longitudinal = rows[rows["prior_share"].notna()]
            summary = {"run_id": run_id, "grouping": grouping, "cohort": cohort, "target_class": target}
            for name, column, frame in (
                ("slice_position", "slice_position", volumes),
                ("outside_body", "outside_body", volumes),
                ("prior_share", "prior_share", longitudinal),
            ):
                mean, low, high = mean_ci(
                    frame[column], resamples=config.resamples, level=config.level, seed=config.seed
                )
                summary |= {f"{name}_mean": mean, f"{name}_ci_low": low, f"{name}_ci_high": high}
            profiles = [profile for profile in volumes["slice_profile"] if profile is not None]
            barely = int((longitudinal["prior_share"] < thresholds.prior_floor).sum())
            low, high = wilson_interval(barely, len(longitudinal), config.level)
            summary |= {
                "n_volume_items": len(volumes),
                "slice_profile": np.mean(profiles, axis=0).astype(np.float32) if profiles else None,
                "n_longitudinal_items": len(longitudinal),
                "n_barely_prior": barely,
                "barely_prior_rate": barely / len(longitudinal) if len(longitudinal) else np.nan,
                "barely_prior_ci_low": low,
                "barely_prior_ci_high": high,
            }
            summaries.append(summary)
    return pd.DataFrame(summaries)
