"""Schemas of the cohort tables the audit writes from the explained targets (statistics, regions,
comparisons, trust, studies); the other tables' schemas come from their records (storage/records.py)."""

from __future__ import annotations

import pyarrow as pa

COHORT_METRICS = ("image_share", "entropy", "top10_mass", "lung_share", "roi_hit", "roi_share")

_COHORT_KEY = [
    ("grouping", pa.string()),
    ("cohort", pa.string()),
    ("target_class", pa.string()),
]

COHORT_STATS_SCHEMA = pa.schema(
    [
        *_COHORT_KEY,
        ("n_items", pa.int32()),
        ("n_targets", pa.int32()),
        ("grid_h", pa.int16()),
        ("grid_w", pa.int16()),
        ("mean_map", pa.list_(pa.float32())),
        ("se_map", pa.list_(pa.float32())),
        ("n_roi", pa.int32()),
        *[
            (f"{metric}_{statistic}", pa.float64())
            for metric in COHORT_METRICS
            for statistic in ("mean", "ci_low", "ci_high")
        ],
    ]
)

COHORT_REGIONS_SCHEMA = pa.schema(
    [
        *_COHORT_KEY,
        ("region", pa.string()),
        ("mean", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("n_items", pa.int32()),
    ]
)

COMPARISONS_SCHEMA = pa.schema(
    [
        *_COHORT_KEY,
        ("metric", pa.string()),
        ("cohort_mean", pa.float64()),
        ("rest_mean", pa.float64()),
        ("difference", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("p_above", pa.float64()),
        ("n_cohort", pa.int32()),
        ("n_rest", pa.int32()),
    ]
)

COHORT_TRUST_SCHEMA = pa.schema(
    [
        *_COHORT_KEY,
        ("method", pa.string()),
        ("reference", pa.string()),
        ("n_items", pa.int32()),
        ("n_checkable", pa.int32()),
        ("peak_in_evidence_rate", pa.float64()),
        ("peak_in_evidence_ci_low", pa.float64()),
        ("peak_in_evidence_ci_high", pa.float64()),
        ("evidence_mass_mean", pa.float64()),
        ("spearman_median", pa.float64()),
        ("morf_auc", pa.float64()),
        ("lerf_auc", pa.float64()),
        ("auc_gap", pa.float64()),
        ("randomization_spearman", pa.float64()),
    ]
)

PROFILE_BINS = 10  # a cohort's slice profile: mean share of image relevance per tenth of the volume

COHORT_STUDIES_SCHEMA = pa.schema(
    [
        *_COHORT_KEY,
        # volumes: where along the ordered volume the maps sit (0 first slice, 1 last), how much of
        # their mass lies outside the body, and the mean profile over PROFILE_BINS bins
        ("n_volume_items", pa.int32()),
        ("slice_position_mean", pa.float64()),
        ("slice_position_ci_low", pa.float64()),
        ("slice_position_ci_high", pa.float64()),
        ("outside_body_mean", pa.float64()),
        ("outside_body_ci_low", pa.float64()),
        ("outside_body_ci_high", pa.float64()),
        ("slice_profile", pa.list_(pa.float32())),
        # longitudinal items (an image labelled "prior"): the prior's share of the image relevance,
        # and how many items barely look at it
        ("n_longitudinal_items", pa.int32()),
        ("prior_share_mean", pa.float64()),
        ("prior_share_ci_low", pa.float64()),
        ("prior_share_ci_high", pa.float64()),
        ("n_barely_prior", pa.int32()),
        ("barely_prior_rate", pa.float64()),
        ("barely_prior_ci_low", pa.float64()),
        ("barely_prior_ci_high", pa.float64()),
    ]
)

AUDIT_SCHEMAS: dict[str, pa.Schema] = {
    "cohort_stats": COHORT_STATS_SCHEMA,
    "cohort_regions": COHORT_REGIONS_SCHEMA,
    "cohort_comparisons": COMPARISONS_SCHEMA,
    "cohort_trust": COHORT_TRUST_SCHEMA,
    "cohort_studies": COHORT_STUDIES_SCHEMA,
}
