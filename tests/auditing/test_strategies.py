"""Strategy discovery on synthetic maps: a corner-tag strategy is found and flagged, honest maps are not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from auditing.aggregate import uniform_shares
from auditing.cohorts import item_level
from auditing.flags import FlagThresholds, RaisedFlag
from auditing.load import join_targets
from auditing.rules.strategy_cluster import STRATEGY_GROUPING, STRATEGY_RULE, strategy_cluster_flags
from auditing.strategies import (
    CLUSTER_COLUMNS,
    cluster_maps,
    cluster_mean_maps,
    map_features,
    strategy_clusters,
)
from auditing.strategy_items import strategy_items
from storage import to_arrow
from tests.auditing.synthetic import GRID, answer_row, token_row
from vocabulary.names import CLUSTER_SCOPE, CORNERS, LUNG_ZONES, SHORTCUT_REGIONS
from vocabulary.regions import standard_regions

RESAMPLES = 200
CELL_CENTRES = np.mgrid[0 : GRID[0], 0 : GRID[1]] + 0.5


def lung_blob(rng: np.random.Generator) -> np.ndarray:
    """A blob on one lung field (image left or right), with a little noise everywhere."""
    centre_y = rng.uniform(2.0, 6.0)
    centre_x = rng.uniform(1.5, 3.3) if rng.random() < 0.5 else rng.uniform(4.7, 6.5)
    rows, cols = CELL_CENTRES
    blob = np.exp(-((rows - centre_y) ** 2 + (cols - centre_x) ** 2) / (2 * 0.8**2))
    return (blob + rng.uniform(0.0, 0.05, GRID)).astype(np.float32)


def corner_tag(rng: np.random.Generator) -> np.ndarray:
    """Mass on the top-right corner block (a burned-in tag), a little noise everywhere."""
    cell_map = rng.uniform(0.0, 0.05, GRID)
    cell_map[0, -1] += rng.uniform(0.8, 1.0)
    cell_map[0, -2] += rng.uniform(0.1, 0.3)
    cell_map[1, -1] += rng.uniform(0.1, 0.3)
    return cell_map.astype(np.float32)


def diffuse(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.5, 1.0, GRID).astype(np.float32)


def audit_items(maps_by_answer: list[tuple[str, list[np.ndarray]]]) -> pd.DataFrame:
    """`strategy_items` rows of whole-answer maps, through the answers and tokens tables."""
    answers, tokens = [], []
    for answer, maps in maps_by_answer:
        for cell_map in maps:
            item_id = f"item-{len(answers)}"
            answers.append(answer_row(item_id, "north", answer=answer))
            tokens.append(token_row(item_id, cell_map))
    answers = to_arrow("answers", answers).to_pandas().assign(run_id="r1")
    tokens = to_arrow("tokens", tokens).to_pandas().assign(run_id="r1")
    return strategy_items(item_level(join_targets(tokens, answers, findings=()), (16, 16)))


def shortcut_run(seed: int) -> pd.DataFrame:
    """120 "Yes." answers, items 0-29 on a corner tag and 90 on the lungs; 100 diffuse "no" answers."""
    rng = np.random.default_rng(seed)
    yes = [corner_tag(rng) for _ in range(30)] + [lung_blob(rng) for _ in range(90)]
    return audit_items([("Yes.", yes), ("no", [diffuse(rng) for _ in range(100)])])


def honest_run(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return audit_items(
        [("yes", [lung_blob(rng) for _ in range(120)]), ("no", [diffuse(rng) for _ in range(100)])]
    )


def flags_of(items: pd.DataFrame, clusters: pd.DataFrame) -> list[RaisedFlag]:
    return strategy_cluster_flags(
        items, clusters, FlagThresholds(), uniform_shares(items), "chefer", resamples=RESAMPLES
    )


def test_a_corner_tag_strategy_is_one_cluster_and_is_flagged():
    items = shortcut_run(seed=0)
    clusters = strategy_clusters(items, seed=0)
    assert list(clusters.columns) == list(CLUSTER_COLUMNS) and len(clusters) == 220
    tagged = clusters["item_id"].str.removeprefix("item-").astype(int) < 30
    corner_cluster = clusters.loc[tagged, "cluster"].mode()[0]
    in_cluster = clusters["cluster"] == corner_cluster
    assert (tagged & in_cluster).sum() / in_cluster.sum() >= 0.9  # purity
    assert (tagged & in_cluster).sum() / tagged.sum() >= 0.9  # coverage
    assert set(clusters.loc[in_cluster, "answer_class"]) == {"yes"}  # "Yes." is the class "yes"
    # cluster ids are unique within the run: the two classes share none
    by_class = clusters.groupby("answer_class")["cluster"].unique()
    assert not set(by_class["yes"]) & set(by_class["no"])
    assert clusters[["embedding_x", "embedding_y"]].notna().all().all()

    [flag] = flags_of(items, clusters)
    assert (flag.scope, flag.rule, flag.grouping) == (
        CLUSTER_SCOPE,
        STRATEGY_RULE,
        STRATEGY_GROUPING,
    )
    assert flag.cohort == str(corner_cluster) and flag.target_class == "yes"
    assert flag.metric == f"{CORNERS}_share" and flag.value >= 1.5 * flag.baseline
    assert SHORTCUT_REGIONS[CORNERS] in flag.message
    assert f"{in_cluster.sum()} of 120 'yes' answers" in flag.message

    means = cluster_mean_maps(items, clusters).set_index("cluster")
    mean_map = means.loc[corner_cluster, "mean_map"].reshape(16, 16)
    assert mean_map[:4, -4:].sum() > 0.4  # the top-right 4×4 cells of the common grid: 6% when uniform


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_honest_maps_raise_no_strategy_flag(seed):
    """Maps on the lungs split into clusters by where the finding is, and diffuse negatives into noise;
    some of those differ from the rest significantly, but none puts its mass where a shortcut would."""
    items = honest_run(seed)
    clusters = strategy_clusters(items, seed=seed)
    assert clusters["cluster"].nunique() > 1
    assert flags_of(items, clusters) == []


def test_clusters_are_deterministic_for_a_fixed_seed():
    items = shortcut_run(seed=3)
    first, again = strategy_clusters(items, seed=5), strategy_clusters(items, seed=5)
    pd.testing.assert_frame_equal(first, again)


def test_tiny_and_identical_groups_are_one_cluster():
    rng = np.random.default_rng(0)
    same = lung_blob(rng)
    items = audit_items([("yes", [lung_blob(rng) for _ in range(3)]), ("no", [same] * 30)])
    clusters = strategy_clusters(items, seed=0, min_items=5)
    assert set(clusters["answer_class"]) == {"no"}  # 3 items: too few to cluster
    assert clusters["cluster"].nunique() == 1
    everything = strategy_clusters(items, seed=0, min_items=1)
    assert everything.groupby("answer_class")["cluster"].nunique().to_dict() == {"no": 1, "yes": 1}
    assert everything.loc[everything["answer_class"] == "yes", "embedding_x"].isna().all()
    assert flags_of(items, everything) == []  # a class of one cluster has no rest to differ from
    labels, embedding = cluster_maps(map_features(items.iloc[:2]), seed=0)
    assert labels.tolist() == [0, 0] and embedding.shape == (2, 2)
    assert strategy_cluster_flags(items, clusters.iloc[:0], FlagThresholds(), {}, "chefer") == []


def _off_lung_items(outside_share: float) -> pd.DataFrame:
    """40 "yes" items: 15 with one map and `outside_share` of their mass off the lungs, 25 with another
    on the lungs (shares set directly: the clusters come from the maps, the test from the shares)."""
    rng = np.random.default_rng(0)
    off, on = np.zeros((16, 16)), np.zeros((16, 16))
    off[12:15, 6:10], on[4:10, 2:6] = 1.0, 1.0
    rows = []
    for index in range(40):
        base, outside = (off, outside_share) if index < 15 else (on, 0.15)
        cell_map = base + rng.uniform(0.0, 0.02, base.shape)
        rows.append(
            {
                "run_id": "r1",
                "item_id": f"item-{index}",
                "target_class": "answer",
                "answer": "yes",
                "mass_map": cell_map / cell_map.sum(),
                "share_border": 0.05,
                "share_corners": 0.02,
                "lung_share": 1.0 - outside + rng.uniform(-0.02, 0.02),
            }
        )
    return strategy_items(pd.DataFrame(rows))


@pytest.mark.parametrize(("outside_share", "flagged"), [(0.8, True), (0.5, False)])
def test_off_the_lungs_is_measured_against_what_a_uniform_map_puts_there(outside_share, flagged):
    """A uniform map puts 1 − 59% = 41% of its mass off the lung zones: a cluster with 50% there is far
    above the rest (15%), and significant, but not 1.5 × what a uniform map does."""
    items = _off_lung_items(outside_share)
    clusters = strategy_clusters(items, seed=0)
    uniform = {name: float(weights.mean()) for name, weights in standard_regions((16, 16)).items()}
    assert 1 - sum(uniform[zone] for zone in LUNG_ZONES) == pytest.approx(0.407, abs=1e-3)
    flags = strategy_cluster_flags(items, clusters, FlagThresholds(), uniform, "chefer", resamples=RESAMPLES)
    assert [flag.metric for flag in flags] == (["outside_lungs_share"] if flagged else [])
    if flagged:
        assert "outside the lungs" in flags[0].message and flags[0].n_items == 15


def test_separate_parts_of_the_graph_are_never_lumped_together_whatever_their_number():
    """Ten strategies, each its own part of the neighbour graph: more than `max_clusters` (8), yet no
    cluster mixes two of them (one cut into 8 would have to)."""
    rng = np.random.default_rng(0)
    features, truth = [], []
    for strategy in range(10):
        for _ in range(30):
            cell_map = rng.uniform(0.0, 0.01, 64)
            cell_map[6 * strategy : 6 * strategy + 4] += rng.uniform(0.5, 1.0, 4)
            features.append(cell_map / cell_map.sum())
            truth.append(strategy)
    labels, _ = cluster_maps(np.array(features), seed=0, max_clusters=8)
    mixed = pd.Series(truth).groupby(labels).nunique()
    assert (mixed == 1).all() and len(mixed) == 10
