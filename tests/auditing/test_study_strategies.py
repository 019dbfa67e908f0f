"""Strategy discovery on hand-made studies: profiles and peak maps, a cluster off the body is flagged,
honest clusters by slice position are not, single images and studies are clustered apart."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from auditing import AggregateConfig, StatsConfig, aggregate
from auditing.cohorts import item_level
from auditing.load import join_targets
from auditing.rules.strategy_cluster import STRATEGY_RULE
from auditing.strategy_items import IMAGE, OUTSIDE_BODY_SHARE, STUDY, UNIFORM_OUTSIDE_BODY, strategy_items
from storage import PROFILE_BINS, to_arrow
from tests.auditing.synthetic import GRID, answer_row, lung_map, token_row

N_SLICES = 9
BODY_OUTSIDE = 0.4  # a slice with anatomy: the share of its cells outside the body
CONFIG = AggregateConfig(stats=StatsConfig(resamples=200), cluster_seed=0)


def text_map(rng: np.random.Generator) -> np.ndarray:
    """Mass on two lines of text across the middle of the image (a dose report saved into the series)."""
    cell_map = rng.uniform(0.0, 0.05, GRID).astype(np.float32)
    cell_map[3:5, 2:6] += rng.uniform(0.5, 1.0, size=(2, 4)).astype(np.float32)
    return cell_map


def volume(item_id: str, rng: np.random.Generator, *, peak_slice: int | None, answer="yes", text=False):
    """An answer on a 9-slice volume: 60–80% of its relevance on `peak_slice` (a lung map, 2–12% of it
    outside the body), the rest spread over the other slices; with `text`, 85–95% on a dose report's
    text in slice 0 (no anatomy: all of it outside the body); no `peak_slice`: diffuse over every slice
    (about as much outside the body as a uniform map)."""
    if peak_slice is None:
        shares = rng.dirichlet(np.full(N_SLICES, 20.0))
    else:
        shares = rng.dirichlet(np.ones(N_SLICES)) * (
            rng.uniform(0.05, 0.15) if text else rng.uniform(0.2, 0.4)
        )
        shares[peak_slice] = 0.0
        shares[peak_slice] = 1.0 - shares.sum()
    tokens = []
    for index, share in enumerate(shares):
        on_text = text and index == peak_slice
        if peak_slice is None:
            cell_map, outside = rng.uniform(0.5, 1.0, GRID).astype(np.float32), rng.normal(BODY_OUTSIDE, 0.03)
        else:
            cell_map, outside = (text_map(rng), 1.0) if on_text else (lung_map(rng), rng.uniform(0.02, 0.12))
        tokens.append(
            token_row(item_id, cell_map / cell_map.sum() * share)
            | {
                "image_index": index,
                "image_group": 0,
                "image_label": f"slice {index + 1} of {N_SLICES}",
                "slice_index": index,
                "n_slices": N_SLICES,
                "study_share": float(share),
                "outside_body_share": float(outside),
                "outside_body_cells": 1.0 if on_text else BODY_OUTSIDE,
            }
        )
    return answer_row(item_id, "north", answer=answer), tokens


def study_run(seed: int, *, off_body: int = 0, n_yes: int = 90, n_no: int = 40):
    """`n_yes` "yes" volumes resting on the nodule's slice (1–8, anywhere), the first `off_body` of
    them instead on a dose report's text in slice 0; `n_no` diffuse "no" volumes."""
    rng = np.random.default_rng(seed)
    answers, tokens = [], []
    for index in range(n_yes + n_no):
        peak = int(rng.integers(1, N_SLICES)) if index < n_yes else None
        peak = 0 if index < off_body else peak
        answer, rows = volume(
            f"item-{index}",
            rng,
            peak_slice=peak,
            answer="yes" if index < n_yes else "no",
            text=index < off_body,
        )
        answers.append(answer)
        tokens += rows
    answers = to_arrow("answers", answers).to_pandas().assign(run_id="r1")
    return answers, to_arrow("tokens", tokens).to_pandas().assign(run_id="r1")


def test_a_study_is_its_profile_its_peak_images_map_and_its_weighted_shares():
    answers, tokens = study_run(seed=0, n_yes=1, n_no=0)
    targets = join_targets(tokens, answers)
    [row] = strategy_items(item_level(targets, (16, 16)), targets).itertuples()
    shares = tokens["study_share"].to_numpy(float)
    assert row.kind == STUDY
    assert row.study_profile.shape == (PROFILE_BINS,) and row.study_profile.sum() == pytest.approx(1.0)
    # slices 0..8 at positions k/8: slice k falls in tenth floor(10 k / 8), the last in the last tenth
    assert row.study_profile[9] == pytest.approx(shares[8], rel=1e-5)
    peak = tokens.iloc[int(np.argmax(shares))]
    peak_map = np.asarray(peak["image_relevance"]).reshape(GRID)
    assert row.mass_map.shape == (16, 16)
    assert np.kron(peak_map / peak_map.sum(), np.ones((2, 2)) / 4) == pytest.approx(row.mass_map, abs=1e-6)
    weights = shares / shares.sum()
    outside = tokens["outside_body_share"].to_numpy(float)
    assert getattr(row, OUTSIDE_BODY_SHARE) == pytest.approx(float(outside @ weights), rel=1e-5)
    assert getattr(row, UNIFORM_OUTSIDE_BODY) == pytest.approx(BODY_OUTSIDE)
    borders = [shares_["border"] for shares_ in tokens["region_shares"].map(dict)]
    assert row.share_border == pytest.approx(float(np.dot(borders, weights)), rel=1e-5)
    assert np.isnan(row.lung_share)  # the radiograph's lung zones do not apply to a volume's slices


@pytest.mark.parametrize("seed", [0, 1])
def test_studies_resting_off_the_body_are_one_cluster_and_flagged(seed):
    answers, tokens = study_run(seed, off_body=25)
    result = aggregate(tokens, answers, CONFIG)
    clusters = result.clusters
    shortcut = clusters["item_id"].str.removeprefix("item-").astype(int) < 25
    cluster = clusters.loc[shortcut, "cluster"].mode()[0]
    inside = clusters["cluster"] == cluster
    assert (shortcut & inside).sum() / inside.sum() >= 0.9 and (shortcut & inside).sum() / 25 >= 0.9
    [flag] = [flag for flag in result.flag_table.itertuples() if flag.rule == STRATEGY_RULE]
    assert flag.cohort == str(cluster) and flag.metric == f"{OUTSIDE_BODY_SHARE.removeprefix('share_')}_share"
    assert flag.value > 0.5 and flag.baseline < 0.15
    assert "outside the body" in flag.message and "'yes' answers on studies" in flag.message
    centre = int(flag.message.split("their relevance centres at ")[1].split("%")[0])
    assert centre < 20  # 85–95% of their relevance on the first slice, at 5%


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_honest_studies_raise_no_strategy_flag(seed):
    """Answers resting on the nodule's slice, wherever it is, are clustered as one continuum (a look
    one slice further is a near strategy), and nothing of theirs is off the body. The diffuse "no"
    answers put ~40% outside the body, far more than the "yes" answers they are compared with, but no
    more than a uniform map does: without that reference they would be flagged."""
    answers, tokens = study_run(seed)
    result = aggregate(tokens, answers, CONFIG)
    assert len(result.clusters) == 130
    assert result.flag_table.empty or not (result.flag_table["rule"] == STRATEGY_RULE).any()
    unreferenced = aggregate(tokens.assign(outside_body_cells=0.0), answers, CONFIG).flag_table
    assert unreferenced.loc[unreferenced["rule"] == STRATEGY_RULE, "target_class"].tolist() == ["no"]


def test_outside_the_body_is_untested_without_the_uniform_reference():
    """Tokens written before `outside_body_cells` was recorded (read as null): a diffuse map would pass
    for off-body."""
    answers, tokens = study_run(seed=0, off_body=25)
    flags = aggregate(tokens.assign(outside_body_cells=None), answers, CONFIG).flag_table
    assert flags.empty or not (flags["rule"] == STRATEGY_RULE).any()


def test_single_images_and_studies_are_clustered_apart():
    answers, tokens = study_run(seed=5, n_yes=30, n_no=0)
    rng = np.random.default_rng(5)
    singles = [answer_row(f"single-{index}", "south", answer="yes") for index in range(30)]
    single_tokens = [token_row(row["item_id"], lung_map(rng)) for row in singles]
    answers = pd.concat([answers, to_arrow("answers", singles).to_pandas().assign(run_id="r1")])
    tokens = pd.concat([tokens, to_arrow("tokens", single_tokens).to_pandas().assign(run_id="r1")])
    result = aggregate(tokens, answers, CONFIG)
    kinds = np.where(result.clusters["item_id"].str.startswith("single"), IMAGE, STUDY)
    assert (pd.Series(kinds).groupby(result.clusters["cluster"].to_numpy()).nunique() == 1).all()
    assert set(kinds) == {IMAGE, STUDY}
