"""Trust in the maps: does each method's map agree with the perturbation references on the
faithfulness sample, and which cohorts' maps must not be trusted?

Two references cell by cell: token occlusion (image-token embeddings replaced at the language model's
input) and pixel occlusion (image pixels replaced, the whole model rerun). Every other method is
compared with each reference's evidence set (`auditing.evidence`); token occlusion itself is compared
with pixel occlusion, which tells whether the vision tower moved the evidence before the language
model. For prompts of several images a third reference works image by image: image occlusion (each
whole image replaced) against each attention method's relevance per image (does the method's top
slice or image lie among those the answer needs?).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from auditing.cohorts import cohorts
from auditing.evidence import agreement, evidence_set, wilson_interval
from auditing.flags import FlagThresholds
from auditing.load import SHARE_COLUMNS, join_targets
from storage import FAITHFULNESS_SCHEMA, TOKENS_SCHEMA
from vocabulary.map_stats import normalised_entropy
from vocabulary.names import IMAGE_REFERENCE, REFERENCE_METHODS

TOKEN_REFERENCE, PIXEL_REFERENCE = REFERENCE_METHODS
# the faithfulness table's own measures: its columns beyond those it shares with tokens, less the timing
AGREEMENT_COLUMNS = tuple(
    name for name in FAITHFULNESS_SCHEMA.names if name not in TOKENS_SCHEMA.names and name != "seconds"
)
ITEM_KEYS = ["run_id", "item_id", "target_class"]


def _cells(rows: pd.DataFrame) -> np.ndarray:
    """One item's maps of every image, in image order, as one vector of cells."""
    ordered = rows.sort_values("image_index")["image_relevance"]
    return np.concatenate([np.asarray(cells, dtype=np.float64) for cells in ordered])


def _image_totals(rows: pd.DataFrame) -> np.ndarray:
    """One item's relevance per image, in image order (a study's slice profile before normalising)."""
    ordered = rows.sort_values("image_index")["image_relevance"]
    return np.array([float(np.sum(np.asarray(cells, dtype=np.float64))) for cells in ordered])


def faithfulness_items(
    faithfulness: pd.DataFrame, answers: pd.DataFrame, findings: Sequence[str] | None
) -> pd.DataFrame:
    """One row per (run, item, target class, method): region shares, normalised entropy and the table's
    measures averaged over images, `cells`, the maps of all the item's images as one vector, and
    `image_totals`, its relevance per image."""
    targets = join_targets(faithfulness, answers, findings=findings)
    targets["top_cell_agrees"] = targets["top_cell_agrees"].astype("float64")
    targets["entropy"] = [normalised_entropy(np.asarray(cells)) for cells in targets["image_relevance"]]
    keys = [*ITEM_KEYS, "method"]
    numeric = [*SHARE_COLUMNS, "lung_share", "entropy", *AGREEMENT_COLUMNS]
    descriptive = [
        c for c in targets.columns if c not in {*keys, *numeric, "image_relevance", "region_shares"}
    ]
    grouped = targets.groupby(keys, sort=False)
    maps = grouped[["image_index", "image_relevance"]]
    cells, totals = maps.apply(_cells).rename("cells"), maps.apply(_image_totals).rename("image_totals")
    items = pd.concat([grouped[numeric].mean(), grouped[descriptive].first(), cells, totals], axis=1)
    return items.reset_index()


def reference_agreement(items: pd.DataFrame, thresholds: FlagThresholds) -> pd.DataFrame:
    """One row per (run, item, target class, method, reference) for every reference the sample holds
    and every other method: `checkable` (the reference has an evidence set), `reference_peak` (its
    largest drop, logits), `peak_in_evidence`, `evidence_mass` and a descriptive `spearman`. Against
    image occlusion the attention methods are compared image by image (`image_totals`), and only on
    items of several images."""
    frames = []
    for reference in (*REFERENCE_METHODS, IMAGE_REFERENCE):
        vectors = "image_totals" if reference == IMAGE_REFERENCE else "cells"
        reference_cells = items.loc[items["method"] == reference, [*ITEM_KEYS, vectors]]
        if reference_cells.empty:
            continue
        compared = (
            ~items["method"].isin([*REFERENCE_METHODS, IMAGE_REFERENCE])
            if reference == IMAGE_REFERENCE
            else ~items["method"].isin([reference, IMAGE_REFERENCE])
        )
        paired = items[compared].assign(cells=items.loc[compared, vectors]).drop(columns="image_totals")
        paired = paired.merge(reference_cells.rename(columns={vectors: "reference_cells"}), on=ITEM_KEYS)
        measures = []
        for cells, reference_map in zip(paired["cells"], paired["reference_cells"], strict=True):
            evidence = evidence_set(
                reference_map,
                fraction=thresholds.evidence_fraction,
                min_drop=thresholds.trust_min_reference_drop,
            )
            checkable = bool(evidence.any())
            peak_in, mass = agreement(cells, evidence) if checkable else (np.nan, np.nan)
            varied = checkable and np.ptp(cells) > 0 and np.ptp(reference_map) > 0
            rank = spearmanr(cells, reference_map).statistic if varied else np.nan
            measures.append((checkable, float(reference_map.max()), float(peak_in), mass, float(rank)))
        columns = ["checkable", "reference_peak", "peak_in_evidence", "evidence_mass", "spearman"]
        paired[columns] = pd.DataFrame(measures, columns=columns, index=paired.index)
        frames.append(paired.drop(columns=["reference_cells"]).assign(reference=reference))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def unchecked_targets(agreements: pd.DataFrame) -> set[tuple]:
    """(run, item, target class) of the sampled items where no reference found evidence."""
    if agreements.empty:
        return set()
    checked = agreements.groupby(ITEM_KEYS)["checkable"].any()
    return set(checked.index[~checked.to_numpy()])


def trust_summary(agreements: pd.DataFrame, group_by: Sequence[str]) -> pd.DataFrame:
    """Per (run, cohort, target class, method, reference): how often the method's peak lies in the
    reference's evidence set, with a Wilson interval, and the mass it puts there, over the
    `n_checkable` items where the reference has evidence; removal curves and randomisation (which
    need no reference) over every sampled item."""
    rows = []
    if agreements.empty:
        return pd.DataFrame()
    for (run_id, target), frame in agreements.groupby(["run_id", "target_class"], sort=True):
        for grouping, cohort, cohort_rows in cohorts(frame, group_by):
            for (method, reference), pair in cohort_rows.groupby(["method", "reference"], sort=True):
                checkable = pair[pair["checkable"]]
                hits = int(checkable["peak_in_evidence"].sum())
                low, high = wilson_interval(hits, len(checkable))
                rows.append(
                    {
                        "run_id": run_id,
                        "grouping": grouping,
                        "cohort": cohort,
                        "target_class": target,
                        "method": method,
                        "reference": reference,
                        "n_items": int(pair["item_id"].nunique()),
                        "n_checkable": len(checkable),
                        "peak_in_evidence_rate": hits / len(checkable) if len(checkable) else np.nan,
                        "peak_in_evidence_ci_low": low,
                        "peak_in_evidence_ci_high": high,
                        "evidence_mass_mean": float(checkable["evidence_mass"].mean()),
                        "spearman_median": float(checkable["spearman"].median()),
                        "morf_auc": float(pair["morf_auc"].mean()),
                        "lerf_auc": float(pair["lerf_auc"].mean()),
                        "auc_gap": float(pair["auc_gap"].mean()),
                        "randomization_spearman": float(pair["randomization_spearman"].median()),
                    }
                )
    return pd.DataFrame(rows)
