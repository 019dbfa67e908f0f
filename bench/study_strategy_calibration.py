"""Do strategy clusters of studies cry wolf? The honest study phantom over held-out studies.

The study control (`phantom.STUDY_MODEL_PATH`) answers from the nodule's slice of a 9-slice volume
and from both images of a prior/current pair: it has no shortcut, so every `strategy_cluster` flag
on its studies is a false alarm. It audits `--n` phantom volumes and `--n` pairs once (the real
flow, local folders, a temporary Prefect server); then `--reseeds` times a random 80% of each run's
items is re-aggregated with a new clustering seed and no manifest columns but the question's.
Reported per kind: the share of runs raising a `strategy_cluster` flag (goal ≤ 5%), the clusters per
answer class, and, for the volumes' "no" answers (diffuse: the absence is everywhere), their share
outside the body beside a uniform map's, the reference that keeps them from being flagged.

No study shortcut model exists, so detection on studies is measured on synthetic maps only
(tests/auditing/test_study_strategies.py).

    python bench/study_strategy_calibration.py              # 200 volumes, 200 pairs, 20 reseeds
    python bench/study_strategy_calibration.py --n 40 --reseeds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditing import AggregateConfig, StatsConfig, aggregate
from auditing.cohorts import item_level
from auditing.load import join_targets
from auditing.rules.strategy_cluster import STRATEGY_RULE
from auditing.strategy_items import OUTSIDE_BODY_SHARE, UNIFORM_OUTSIDE_BODY, strategy_items
from bench.flag_calibration import audit_outputs, bench_folder, without_columns
from phantom import STUDY_MODEL_PATH
from phantom.demo import write_study_datasets

SEED = 25_300  # held out: training < 10,000, reports 20,000, benches 21,000-25,100
MANIFEST_COLUMNS = ("site", "finding", "expected_answer")  # dropped: nothing but the maps is left


def reseeded_runs(answers: pd.DataFrame, tokens: pd.DataFrame, config, reseeds: int, rng) -> dict:
    """Per reseed: a random 80% of the items, a new clustering seed; strategy flags and clusters."""
    raised, clusters_per_class = 0, []
    for seed in range(reseeds):
        chosen = rng.choice(answers["item_id"].to_numpy(), size=int(0.8 * len(answers)), replace=False)
        result = aggregate(
            tokens[tokens["item_id"].isin(chosen)],
            without_columns(answers[answers["item_id"].isin(chosen)], MANIFEST_COLUMNS),
            dataclasses.replace(config, cluster_seed=seed),
        )
        raised += bool(len(result.flags)) and bool((result.flag_table["rule"] == STRATEGY_RULE).any())
        clusters_per_class.append(result.clusters.groupby("answer_class")["cluster"].nunique())
    per_class = pd.concat(clusters_per_class, axis=1)
    return {
        "reseeds": reseeds,
        "any_flag_rate": raised / reseeds,
        "clusters_per_class_median": {name: float(v) for name, v in per_class.median(axis=1).items()},
    }


def outside_body(answers: pd.DataFrame, tokens: pd.DataFrame, config) -> dict:
    """Per answer of the whole run: [mean share outside the body, a uniform map's]."""
    targets = join_targets(tokens, answers, findings=config.findings)
    rows = strategy_items(item_level(targets, config.stats.common_grid), targets)
    means = rows.groupby(rows["answer"].str.lower())[[OUTSIDE_BODY_SHARE, UNIFORM_OUTSIDE_BODY]].mean()
    return {answer: [round(float(v), 3) for v in row] for answer, row in means.iterrows()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="volumes and pairs audited (each)")
    parser.add_argument("--reseeds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--resamples", type=int, default=200, help="bootstrap resamples (flags do not use them)"
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    work = bench_folder("vlm-audit-study-calibration-")
    started = time.perf_counter()
    manifests = write_study_datasets(work / "data", args.n, args.seed)
    audited = {kind: audit_outputs(path, work / kind, STUDY_MODEL_PATH) for kind, path in manifests.items()}
    audit_seconds = time.perf_counter() - started
    config = AggregateConfig(stats=StatsConfig(resamples=args.resamples))
    rng = np.random.default_rng(args.seed)
    result = {
        "studies": args.n,
        "seed": args.seed,
        "kinds": {
            kind: reseeded_runs(*tables, config, args.reseeds, rng) for kind, tables in audited.items()
        },
        "volume_outside_body_vs_uniform": outside_body(*audited["volume"], config),
        "audit_seconds": round(audit_seconds, 1),
        "aggregate_seconds": round(time.perf_counter() - started - audit_seconds, 1),
    }
    for kind, figures in result["kinds"].items():
        print(f"{kind}: {args.n} studies, {args.reseeds} reseeded 80% runs: strategy flag in "
              f"{figures['any_flag_rate']:.1%} (goal <= 5%); clusters per class (median) "
              f"{figures['clusters_per_class_median']}")  # fmt: skip
    print(
        f"volumes, share outside the body vs a uniform map's, per answer: {result['volume_outside_body_vs_uniform']}"
    )
    print(f"audits {result['audit_seconds']} s, aggregation {result['aggregate_seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
