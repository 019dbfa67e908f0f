"""Strategy discovery (SpRAy, Lapuschkin et al. 2019): clusters of whole-answer maps, per answer class.

The whole-answer maps of one answer class ("yes", "no", ...) are clustered by where they put their
mass: scikit-learn spectral clustering on a symmetrised k-nearest-neighbour graph of the maps (on
at most a 16×16 grid, folded by the image's mirror symmetries so that a marker in any corner is one
strategy), the number of clusters by the largest gap between the smallest eigenvalues of the graph's
normalised Laplacian. A cluster is a strategy the model answers with; the `strategy_cluster` rule
(`auditing.rules.strategy_cluster`) flags a cluster whose maps sit on the image border, its corners or
outside the lungs far more than the rest of its class (the rest of the run's answers where its class is
one strategy) and than a uniform map would.

Studies (several images per item) are clustered apart from single images, by where along the study
their relevance sits (the per-image mass profile, compared cumulatively) and by their peak image's
map, half the weight each (`auditing.strategy_items`); besides the image border and corners, a
volume's cluster is tested for its share outside the body, over the slices: relevance on no anatomy
is off the slices that carry any answer. Which slice carries a given answer is not known without
ground truth, so where along the studies a cluster rests is reported, not flagged.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.sparse import csgraph, csr_matrix, identity
from scipy.sparse.linalg import eigsh
from sklearn.cluster import SpectralClustering
from sklearn.manifold import spectral_embedding
from sklearn.neighbors import kneighbors_graph

from auditing.cohorts import ITEM_KEYS, MISSING
from auditing.strategy_items import STUDY
from vocabulary.names import ANSWER
from vocabulary.regions import cell_means

FEATURE_GRID = (16, 16)  # maps on a finer common grid are averaged down to this
MIN_NEIGHBORS = 5
NEAR_L1 = 0.2  # mean maps this close (total variation 0.1: 90% of their mass in the same cells): one strategy
PROFILE_WEIGHT = 0.5  # a study's features: its profile along the study, and its peak image's map
CLUSTER_COLUMNS = (
    "run_id",
    "item_id",
    "target_class",
    "answer_class",
    "cluster",
    "embedding_x",
    "embedding_y",
)
_DENSE_LIMIT = 1000  # graphs up to this many nodes get a dense eigendecomposition
# LOBPCG: ARPACK's shift-invert factorises L, whose fill-in on the graph of diffuse maps costs minutes
_SOLVER = "lobpcg"
_DISCONNECTED = "Graph is not fully connected"  # sklearn's warning; separated strategies are expected


def answer_class(answer: object) -> str:
    """An answer's class: its text lower-cased, whitespace collapsed, final punctuation dropped.

    >>> answer_class(" Yes. ")
    'yes'
    """
    text = " ".join(answer.lower().split()).rstrip(".!?,;: ") if isinstance(answer, str) else ""
    return text or MISSING


def map_features(items: pd.DataFrame, grid: tuple[int, int] = FEATURE_GRID) -> np.ndarray:
    """[rows, cells]: each row's `mass_map` (all on one common grid) as a distribution, averaged down to
    `grid` where the common grid is finer, and folded by the image's mirror symmetries (the mean of the
    map and its left-right, up-down and both flips): a marker in any corner, a ruler along either edge
    is one strategy, as is a look at either lung. A row whose map holds no mass is all zeros."""
    if items.empty:
        return np.zeros((0, grid[0] * grid[1]))
    maps = np.stack([np.asarray(m, dtype=np.float64) for m in items["mass_map"]])  # [rows, h, w]
    rows, cols = min(maps.shape[1], grid[0]), min(maps.shape[2], grid[1])
    maps = cell_means(cell_means(maps, rows, axis=1), cols, axis=2)
    maps = (maps + maps[:, ::-1] + maps[:, :, ::-1] + maps[:, ::-1, ::-1]).reshape(len(maps), -1) / 4
    totals = maps.sum(axis=1, keepdims=True)
    return np.divide(maps, totals, out=np.zeros_like(maps), where=totals > 0)


def strategy_features(rows: pd.DataFrame) -> np.ndarray:
    """[rows, features] of one kind of item: single images' `map_features`; for studies, their profile
    along the study as its cumulative sum over the bins, divided by their count (L1 distances between
    two are then how far, in study lengths, the relevance moved: a look one slice further is a near
    strategy, one at the other end a far one), weighted `PROFILE_WEIGHT`, and their (peak image's) map
    features, weighted the rest."""
    features = map_features(rows)
    if rows.empty or rows["kind"].iloc[0] != STUDY:
        return features
    profiles = np.stack([np.asarray(profile, dtype=np.float64) for profile in rows["study_profile"]])
    cumulative = np.cumsum(profiles / profiles.sum(axis=1, keepdims=True), axis=1) / profiles.shape[1]
    return np.hstack([PROFILE_WEIGHT * cumulative, (1 - PROFILE_WEIGHT) * features])


def knn_affinity(features: np.ndarray, n_neighbors: int) -> csr_matrix:
    """The k-nearest-neighbour connectivity graph, symmetrised (an edge where either point is among the
    other's neighbours)."""
    graph = kneighbors_graph(features, n_neighbors, mode="connectivity", include_self=False)
    return csr_matrix(graph.maximum(graph.T))


def merge_near_clusters(features: np.ndarray, labels: np.ndarray, near: float = NEAR_L1) -> np.ndarray:
    """Labels with clusters whose mean maps lie within `near` (L1 distance of the distributions) of each
    other joined, transitively: a graph cut through a continuum of near-identical maps (one strategy
    with noise) is not two strategies."""
    groups = np.unique(labels)
    means = np.stack([features[labels == group].mean(axis=0) for group in groups])
    close = np.abs(means[:, None, :] - means[None, :, :]).sum(axis=2) < near
    _, joined = csgraph.connected_components(csr_matrix(close), directed=False)
    return joined[np.searchsorted(groups, labels)]


def eigengap_clusters(affinity: csr_matrix, max_clusters: int, seed: int) -> int:
    """The number of clusters k (1 to `max_clusters`) with the largest gap λₖ₊₁ − λₖ between the
    smallest eigenvalues of the graph's normalised Laplacian L (λ₁ = 0)."""
    laplacian = csgraph.laplacian(affinity, normed=True)
    n = laplacian.shape[0]
    count = min(max_clusters + 1, n - 1)
    if n <= _DENSE_LIMIT:
        values = np.linalg.eigvalsh(laplacian.toarray())[:count]
    else:  # the largest of I − L, by Lanczos from a seeded start: no factorisation (fill-in) of L
        start = np.random.default_rng(seed).uniform(-1, 1, n)
        largest = eigsh(identity(n) - laplacian, k=count, which="LA", v0=start, return_eigenvectors=False)
        values = np.sort(1.0 - largest)
    return int(np.argmax(np.diff(values))) + 1


def cluster_maps(
    features: np.ndarray, *, seed: int = 0, max_clusters: int = 8, n_neighbors: int = 15
) -> tuple[np.ndarray, np.ndarray]:
    """(labels [n], embedding [n, 2]) of maps' feature rows: spectral clusters numbered by size (0 the
    largest) and the 2 leading non-trivial spectral embedding coordinates of the same graph.

    Each map is joined to its `n_neighbors` nearest, or a tenth of the group where that is fewer (at
    least MIN_NEIGHBORS): a small strategy's maps are then mostly each other's neighbours. The graph's
    connected components are clustered one by one (a cut that must choose among more separate parts
    than `max_clusters` would lump unrelated ones together: many studies on each slice position, and
    a shortcut's), then near clusters joined. A group with no more items than that + 1, or of identical
    maps, is one cluster without an embedding (NaN). Deterministic for a fixed `seed`.
    """
    n = len(features)
    labels = np.zeros(n, dtype=np.int64)
    embedding = np.full((n, 2), np.nan)
    n_neighbors = min(n_neighbors, max(MIN_NEIGHBORS, n // 10))
    if n <= n_neighbors + 1 or np.ptp(features, axis=0).max() == 0:
        return labels, embedding
    affinity = knn_affinity(features, n_neighbors)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DISCONNECTED, category=UserWarning)
        # LOBPCG may stop a hair short of its tolerance on separate components: harmless for a display
        # coordinate and for k-means
        warnings.filterwarnings("ignore", message="Exited postprocessing", category=UserWarning)
        warnings.filterwarnings("ignore", message="The problem size", category=UserWarning)  # small: dense
        embedding = spectral_embedding(affinity, n_components=2, eigen_solver=_SOLVER, random_state=seed)
        _, components = csgraph.connected_components(affinity, directed=False)
        for component in np.unique(components):
            members = np.flatnonzero(components == component)
            labels[members] = (
                labels.max()
                + 1
                + _component_clusters(affinity[members][:, members], max_clusters, n_neighbors, seed)
            )
    return _by_size(merge_near_clusters(features, labels)), embedding


def _component_clusters(affinity: csr_matrix, max_clusters: int, n_neighbors: int, seed: int) -> np.ndarray:
    """Spectral clusters (0, 1, ...) of one connected graph, their number by the eigengap."""
    n = affinity.shape[0]
    n_clusters = eigengap_clusters(affinity, max_clusters, seed) if n > n_neighbors + 1 else 1
    if n_clusters == 1:
        return np.zeros(n, dtype=np.int64)
    clustering = SpectralClustering(
        n_clusters, affinity="precomputed", eigen_solver=_SOLVER, random_state=seed
    )
    return clustering.fit_predict(affinity)


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered by cluster size, largest first (ties by the old label)."""
    order = np.argsort(-np.bincount(labels), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[labels]


def strategy_clusters(
    items: pd.DataFrame,
    *,
    seed: int = 0,
    min_items: int = 5,
    max_clusters: int = 8,
    n_neighbors: int = 15,
    max_answer_classes: int = 10,
) -> pd.DataFrame:
    """The strategy cluster of every whole-answer item row with a map (`strategy_items` rows), clustered
    per run, answer class and kind (single images, studies): one row per item with `CLUSTER_COLUMNS`.

    `target_class` is the item rows' ("answer"), `answer_class` the class clustered (`answer_class` of
    the answer text); cluster ids are unique within a run, numbered across its answer classes in order.
    A run with more than `max_answer_classes` distinct answers (free text) is clustered as one class,
    "answer"; a class (of one kind) with fewer than `min_items` items is left out.
    """
    answers = items[map_features(items).sum(axis=1) > 0].reset_index(drop=True)
    frames = []
    for _, run_rows in answers.groupby("run_id", sort=True):
        classes = run_rows["answer"].map(answer_class)
        if classes.nunique() > max_answer_classes:
            classes = pd.Series(ANSWER, index=run_rows.index)
        next_cluster = 0
        for (answer, _), rows in run_rows.groupby([classes, run_rows["kind"]], sort=True):
            if len(rows) < min_items:
                continue
            labels, embedding = cluster_maps(
                strategy_features(rows), seed=seed, max_clusters=max_clusters, n_neighbors=n_neighbors
            )
            frames.append(
                rows[ITEM_KEYS].assign(
                    answer_class=answer,
                    cluster=labels + next_cluster,
                    embedding_x=embedding[:, 0],
                    embedding_y=embedding[:, 1],
                )
            )
            next_cluster += int(labels.max()) + 1
    if not frames:
        return pd.DataFrame(columns=list(CLUSTER_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def cluster_mean_maps(items: pd.DataFrame, clusters: pd.DataFrame) -> pd.DataFrame:
    """Per (run, answer class, cluster): `n_items` and the mean of its items' mass maps on the common
    grid (`grid_h`, `grid_w`, `mean_map` flattened, float32, as cohort_stats stores them; a study's
    map is its peak image's)."""
    columns = ["run_id", "answer_class", "cluster", "n_items", "grid_h", "grid_w", "mean_map"]
    if clusters.empty:  # nothing clustered (a run without answers): its empty key columns hold no type
        return pd.DataFrame(columns=columns)
    frame = clusters.merge(items[[*ITEM_KEYS, "mass_map"]], on=ITEM_KEYS)
    rows = []
    for (run_id, answer, cluster), group in frame.groupby(["run_id", "answer_class", "cluster"], sort=True):
        mean_map = np.mean(np.stack(list(group["mass_map"])), axis=0)
        rows.append(
            {
                "run_id": run_id,
                "answer_class": answer,
                "cluster": cluster,
                "n_items": len(group),
                "grid_h": mean_map.shape[0],
                "grid_w": mean_map.shape[1],
                "mean_map": mean_map.ravel().astype(np.float32),
            }
        )
    return pd.DataFrame(rows, columns=columns)
