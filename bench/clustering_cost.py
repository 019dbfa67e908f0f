"""What strategy discovery costs: spectral clustering of synthetic whole-answer maps, two answer classes.

"yes" maps are Gaussian blobs on the lung fields, a fifth of them on a corner tag instead; "no" maps
are diffuse. `strategy_clusters` clusters each class on its own (k-nearest-neighbour graph, eigengap,
spectral clustering, spectral embedding) and `strategy_cluster_flags` tests every cluster (bootstrap
CIs, Mann–Whitney, Benjamini–Hochberg); printed are the seconds of each and a JSON line.

`--studies`: every item is a 9-slice volume instead (the same maps on its peak slice, a fifth of the
"yes" answers on a slice without anatomy, the rest of the relevance spread over the other slices);
`strategy_items` first turns the 9 image rows of each into its profile, peak map and shares (timed
apart), then the same clustering and tests.

    python bench/clustering_cost.py                 # 10,000 items, 16×16 maps
    python bench/clustering_cost.py --studies       # 10,000 volumes of 9 slices
    python bench/clustering_cost.py --items 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditing.aggregate import grid_uniform_shares
from auditing.flags import FlagThresholds
from auditing.rules.strategy_cluster import strategy_cluster_flags
from auditing.strategies import strategy_clusters
from auditing.strategy_items import strategy_items
from vocabulary.names import ANSWER, LUNG_ZONES, SHORTCUT_REGIONS
from vocabulary.regions import standard_regions

GRID = (16, 16)
N_SLICES = 9


def synthetic_items(n_items: int, seed: int) -> pd.DataFrame:
    """`item_level`-like rows (only the columns clustering reads): half "yes", half "no"."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : GRID[0], 0 : GRID[1]] + 0.5
    maps, answers, tags = [], [], []
    for index in range(n_items):
        answer = "yes" if index % 2 == 0 else "no"
        noise = rng.uniform(0.0, 0.05, GRID)
        tags.append(answer == "yes" and rng.random() < 0.2)
        if answer == "no":
            cell_map = rng.uniform(0.5, 1.0, GRID)
        elif tags[-1]:  # a corner tag
            cell_map = noise
            cell_map[0:2, -2:] += rng.uniform(0.5, 1.0, (2, 2))
        else:  # a blob on one lung field
            centre_y = rng.uniform(4.0, 12.0)
            centre_x = rng.uniform(3.0, 6.5) if rng.random() < 0.5 else rng.uniform(9.5, 13.0)
            cell_map = noise + np.exp(-((rows - centre_y) ** 2 + (cols - centre_x) ** 2) / 3.0)
        maps.append(cell_map / cell_map.sum())
        answers.append(answer)
    regions = standard_regions(GRID)
    shares = {
        f"share_{name}": [float((cell_map * regions[name]).sum()) for cell_map in maps]
        for name in (*SHORTCUT_REGIONS, *LUNG_ZONES)
    }
    frame = pd.DataFrame(
        {
            "run_id": "bench",
            "item_id": [f"item-{index}" for index in range(n_items)],
            "target_class": ANSWER,
            "answer": answers,
            "mass_map": maps,
            "tag": tags,
            **shares,
        }
    )
    return frame.assign(lung_share=frame[[f"share_{zone}" for zone in LUNG_ZONES]].sum(axis=1))


def synthetic_studies(items: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(`item_level`-like rows, `join_targets`-like image rows) of 9-slice volumes: each item's map on a
    random peak slice (slice 0, without anatomy, for the corner-tag answers), faint ones elsewhere."""
    rng = np.random.default_rng(seed)
    share_columns = [column for column in items.columns if column.startswith("share_")]
    tagged = items["tag"].to_numpy()
    slices = items.loc[items.index.repeat(N_SLICES)].reset_index(drop=True)
    peaks = np.where(tagged, 0, rng.integers(1, N_SLICES, len(items)))
    on_peak = np.arange(N_SLICES) == peaks[:, None]  # [items, slices]
    shares = rng.dirichlet(np.ones(N_SLICES), len(items)) * 0.3
    shares[on_peak] = 0.0
    shares[on_peak] = 1.0 - shares.sum(axis=1)
    index = np.tile(np.arange(N_SLICES), len(items))
    on_peak, shares = on_peak.ravel(), shares.ravel()
    no_anatomy = on_peak & np.repeat(tagged, N_SLICES)
    targets = slices.assign(
        image_index=index,
        slice_index=index,
        n_slices=N_SLICES,
        study_share=shares,
        grid_h=GRID[0],
        grid_w=GRID[1],
        image_relevance=[np.asarray(cell_map, dtype=np.float32).ravel() for cell_map in slices["mass_map"]],
        outside_body_share=np.where(no_anatomy, 1.0, rng.uniform(0.02, 0.12, len(slices))),
        outside_body_cells=np.where(no_anatomy, 1.0, 0.45),
    )
    columns = ["run_id", "item_id", "target_class", "answer", "tag", "mass_map", *share_columns, "lung_share"]
    return items[columns], targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--studies", action="store_true", help="9-slice volumes instead of single images")
    args = parser.parse_args()

    items = synthetic_items(args.items, args.seed)
    seconds, flag_seconds, study_seconds = [], [], []
    uniform = grid_uniform_shares(GRID)
    if args.studies:
        items, targets = synthetic_studies(items, args.seed)
    for _ in range(args.repeats):
        if args.studies:
            start = time.perf_counter()
            rows = strategy_items(items, targets)
            study_seconds.append(time.perf_counter() - start)
        else:
            rows = strategy_items(items)
        start = time.perf_counter()
        clusters = strategy_clusters(rows, seed=args.seed)
        seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        flags = strategy_cluster_flags(rows, clusters, FlagThresholds(), uniform, "chefer")
        flag_seconds.append(time.perf_counter() - start)
    sizes = clusters.groupby(["answer_class", "cluster"]).size()
    tagged = set(items.loc[items["tag"], "item_id"])
    found = []
    for flag in flags:
        members = set(clusters.loc[clusters["cluster"] == int(flag["cohort"]), "item_id"])
        hits = len(members & tagged)
        found.append({"cluster": flag["cohort"], "metric": flag["metric"], "purity": round(hits / len(members), 3),
                      "coverage": round(hits / len(tagged), 3)})  # fmt: skip
    what = (
        f"volumes of {N_SLICES} slices (profiles and peak maps {min(study_seconds):.2f} s)"
        if args.studies
        else "items"
    )
    print(f"{args.items} {what}, {GRID[0]}×{GRID[1]} maps: clustering {min(seconds):.2f} s, flags "
          f"{min(flag_seconds):.2f} s (best of {args.repeats}); {len(flags)} flagged")  # fmt: skip
    for (answer, cluster), size in sizes.items():
        print(f"  '{answer}' cluster {cluster}: {size} items")
    result = {
        "items": args.items,
        "studies": args.studies,
        "study_rows_seconds": round(min(study_seconds), 3) if study_seconds else None,
        "grid": list(GRID),
        "seconds": round(min(seconds), 3),
        "flag_seconds": round(min(flag_seconds), 3),
        "flagged_clusters": found,
        "clusters": {answer: int(count) for answer, count in sizes.groupby(level=0).size().items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
