"""The rows strategy discovery clusters and tests: one per whole-answer item, images and studies alike.

A single image's row is `item_level`'s: its map on the common grid and its region shares. A study
(several images in one prompt: a volume's slices, a prior and a current, several views) is described
by where along the study its relevance sits and what its peak image shows:

- `study_profile`: each image's `study_share` summed per tenth of the study (`PROFILE_BINS` bins; a
  slice at its position in the ordered volume, another image at its place in the prompt);
- `mass_map`: the map of the image with the largest share, as a distribution on the common grid;
- the region shares (`share_border`, `share_corners`, `lung_share`) as the images' means weighted by
  their study shares, so that an image the answer barely rests on counts little;
- `share_outside_body` (volumes): the study-share-weighted share outside the body over the slices (a
  slice without anatomy counts whole), and `uniform_outside_body`, what a map uniform over the whole
  study puts there (the slices' mean `outside_body_cells`); the chest radiograph's lung zones do not
  apply to a volume's slices, so a volume's `lung_share` is NaN.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from auditing.cohorts import ITEM_KEYS
from auditing.resample import mass_distribution
from auditing.studies import outside_body, position_profile, slice_positions, volume_slices
from vocabulary.names import ANSWER, BORDER, CORNERS, OUTSIDE_BODY

IMAGE, STUDY = "image", "study"  # the kinds of item clustered apart
WEIGHTED_SHARES = (f"share_{BORDER}", f"share_{CORNERS}", "lung_share")
OUTSIDE_BODY_SHARE = f"share_{OUTSIDE_BODY}"
UNIFORM_OUTSIDE_BODY = f"uniform_{OUTSIDE_BODY}"
STUDY_COLUMNS = ("kind", "study_profile", OUTSIDE_BODY_SHARE, UNIFORM_OUTSIDE_BODY)


def strategy_items(items: pd.DataFrame, targets: pd.DataFrame | None = None) -> pd.DataFrame:
    """`items`' whole-answer rows (`item_level`), with `STUDY_COLUMNS` added: `kind` (`image` or
    `study`), and for the items of several images in `targets` (`join_targets` rows) their study's
    profile, peak-image map, weighted shares and share outside the body in place of the images' means."""
    answers = items[items["target_class"] == ANSWER].reset_index(drop=True)
    answers = answers.assign(
        kind=IMAGE, study_profile=None, **{OUTSIDE_BODY_SHARE: np.nan, UNIFORM_OUTSIDE_BODY: np.nan}
    )
    if targets is None or answers.empty or "study_share" not in targets.columns:
        return answers
    grid = np.asarray(answers["mass_map"].iloc[0]).shape
    studies = study_rows(targets[targets["target_class"] == ANSWER], grid)
    if studies.empty:
        return answers
    by_key = studies.set_index(ITEM_KEYS)
    keys = list(zip(*(answers[key] for key in ITEM_KEYS), strict=True))
    for column in by_key.columns:
        values = by_key[column].to_dict()
        answers[column] = [values.get(key, value) for key, value in zip(keys, answers[column], strict=True)]
    return answers


def study_rows(targets: pd.DataFrame, grid: tuple[int, int]) -> pd.DataFrame:
    """Per (run, item, target class) of several image rows whose study shares carry mass: `kind`,
    `study_profile`, `mass_map` (the peak image's), the weighted shares and `share_outside_body`."""
    several = targets.groupby(ITEM_KEYS, sort=False)["image_index"].transform("size") > 1
    rows = []
    for key, group in targets[several].groupby(ITEM_KEYS, sort=False):
        weights = group["study_share"].fillna(0.0).clip(lower=0.0).to_numpy(np.float64)
        if weights.sum() <= 0:
            continue
        weights = weights / weights.sum()
        slices = volume_slices(group).to_numpy()
        order = group["image_index"].rank(method="first").to_numpy(float) - 1
        positions = order / (len(group) - 1)
        positions[slices] = slice_positions(group[slices])
        peak = group.iloc[int(np.argmax(weights))]
        row = dict(zip(ITEM_KEYS, key, strict=True)) | {
            "kind": STUDY,
            "study_profile": position_profile(positions, weights),
            "mass_map": mass_distribution(
                peak["image_relevance"], (int(peak["grid_h"]), int(peak["grid_w"])), grid
            ),
            **{share: float(np.dot(group[share].to_numpy(np.float64), weights)) for share in WEIGHTED_SHARES},
            OUTSIDE_BODY_SHARE: outside_body(group[slices], weights[slices]),
            UNIFORM_OUTSIDE_BODY: _uniform_outside_body(group[slices]),
        }
        if slices.all():
            row["lung_share"] = np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _uniform_outside_body(slices: pd.DataFrame) -> float:
    """The slices' mean share of cells outside the body (those where it is known; tokens written before
    it was recorded read it as null); NaN for none."""
    cells = slices["outside_body_cells"].to_numpy(dtype=np.float64)
    return float(np.nanmean(cells)) if (~np.isnan(cells)).any() else np.nan
