"""What strategy discovery costs: spectral clustering of synthetic whole-answer maps, two answer classes.

"yes" maps are Gaussian blobs on the lung fields, a fifth of them on a corner tag instead; "no" maps
are diffuse. `strategy_clusters` clusters each class on its own (k-nearest-neighbour graph, eigengap,
spectral clustering, spectral embedding) and `strategy_cluster_flags` tests every cluster (bootstrap
CIs, Mann–Whitney, Benjamini–Hochberg); printed are the seconds of each and a JSON line.

    python bench/clustering_cost.py                 # 10,000 items, 16×16 maps
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
from auditing.strategies import strategy_cluster_flags, strategy_clusters
from explainer.regions import standard_regions
from storage.names import ANSWER, LUNG_ZONES, SHORTCUT_REGIONS

GRID = (16, 16)


def synthetic_items(n_items: int, seed: int) -> pd.DataFrame:
    """`item_level`-like rows (only the columns clustering reads): half "yes", half "no"."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : GRID[0], 0 : GRID[1]] + 0.5
    maps, answers = [], []
    for index in range(n_items):
        answer = "yes" if index % 2 == 0 else "no"
        noise = rng.uniform(0.0, 0.05, GRID)
        if answer == "no":
            cell_map = rng.uniform(0.5, 1.0, GRID)
        elif rng.random() < 0.2:  # a corner tag
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
            **shares,
        }
    )
    return frame.assign(lung_share=frame[[f"share_{zone}" for zone in LUNG_ZONES]].sum(axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    items = synthetic_items(args.items, args.seed)
    seconds, flag_seconds = [], []
    uniform = grid_uniform_shares(GRID)
    for _ in range(args.repeats):
        start = time.perf_counter()
        clusters = strategy_clusters(items, seed=args.seed)
        seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        flags = strategy_cluster_flags(items, clusters, FlagThresholds(), uniform, "chefer")
        flag_seconds.append(time.perf_counter() - start)
    sizes = clusters.groupby(["answer_class", "cluster"]).size()
    print(f"{args.items} items, {GRID[0]}×{GRID[1]} maps: clustering {min(seconds):.2f} s, flags "
          f"{min(flag_seconds):.2f} s (best of {args.repeats}); {len(flags)} flagged")  # fmt: skip
    for (answer, cluster), size in sizes.items():
        print(f"  '{answer}' cluster {cluster}: {size} items")
    result = {
        "items": args.items,
        "grid": list(GRID),
        "seconds": round(min(seconds), 3),
        "flag_seconds": round(min(flag_seconds), 3),
        "flagged_clusters": len(flags),
        "clusters": {answer: int(count) for answer, count in sizes.groupby(level=0).size().items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
