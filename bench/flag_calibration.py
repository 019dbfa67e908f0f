"""Do the flags cry wolf, and do they still catch the shortcut?

1. **False alarms.** The honest phantom audits `--n` demo-like cases once (the real flow, local
   folders, a temporary Prefect server). The stored outputs are then re-aggregated `--shuffles`
   times with the cohort labels shuffled over the items (`--cohorts` random sites of equal size):
   no cohort differs from the rest but by chance, so every cohort flag is a false alarm. Reported:
   the share of shuffles that raise any cohort flag (goal ≤ 5%).
2. **Detection.** The shortcut phantom (it answers "yes" wherever a burned-in corner tag is) audits
   the same cases, whose `site` is "north" exactly where the tag is. `--subsets` random sub-cohorts
   of `--subset-size` items (the demo's size) are aggregated by site: reported is the share in which
   its tagged cohort raises a corner or border share flag (goal ≥ 95%), and, for the same subsets
   audited with the honest model, the share that flags the tagged cohort anyway.
3. **Item flags** (a reviewer's worklist): the share of items with an item flag, honest and shortcut.
4. **Strategy clusters.** `--reseeds` times, a random 80% of the items is aggregated with a new
   clustering seed and a manifest that names neither the tag nor the site (both columns dropped):
   reported are the share of honest runs raising a `strategy_cluster` flag (goal ≤ 5%), and for the
   shortcut, the flagged cluster holding most tagged items: its purity (tagged share of the cluster,
   goal ≥ 80%) and coverage (its share of the tagged items, goal ≥ 60%).

Only the stored Parquet outputs are re-aggregated (no model runs after the two audits).

    python bench/flag_calibration.py                  # 200 cases, 200 shuffles, 200 subsets, 20 reseeds
    python bench/flag_calibration.py --n 60 --shuffles 20 --subsets 20 --reseeds 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditing import AggregateConfig, StatsConfig, aggregate
from auditing.rules.shortcut_shares import BORDER_SHARE_RULE, CORNERS_SHARE_RULE
from auditing.rules.strategy_cluster import STRATEGY_RULE
from phantom import MODEL_PATH, SHORTCUT_MODEL_PATH
from phantom.demo import write_demo_dataset
from storage import read_table
from vocabulary.names import ITEM_SCOPE

SEED = 23_000  # held out: training uses seeds < 10_000, the reports 20_000, the other benches 21_000-22_000
SHORTCUT_RULES = (CORNERS_SHARE_RULE, BORDER_SHARE_RULE)
UNNAMED = ("site", "marker")  # the columns that name the tag, dropped for the strategy check


def audit_outputs(manifest: Path, out: Path, model: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The answers and tokens tables of one real audit (no aggregation: the bench aggregates)."""
    from flows.audit import audit
    from tasks.config import AuditConfig

    config = AuditConfig(
        manifest=str(manifest),
        out=str(out),
        model=str(model),
        overlays="none",
        max_new_tokens=8,
        aggregate=False,
    )
    run_id = audit(config).run_id
    answers = read_table(str(out), "answers", run_id=run_id).to_pandas().assign(run_id=run_id)
    tokens = read_table(str(out), "tokens", run_id=run_id).to_pandas().assign(run_id=run_id)
    return answers, tokens


def bench_folder(prefix: str) -> Path:
    """A temporary folder for a bench's data and outputs, and the home of its own temporary Prefect
    server (quiet, no telemetry) where the environment names none."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    for key, value in (("PREFECT_LOGGING_LEVEL", "WARNING"), ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
                       ("PREFECT_HOME", str(work / "prefect"))):  # fmt: skip
        os.environ.setdefault(key, value)
    return work


def with_sites(answers: pd.DataFrame, sites: np.ndarray) -> pd.DataFrame:
    """`answers` whose metadata `site` is replaced by `sites` (one per row)."""
    answers = answers.copy()
    answers["metadata"] = [
        [(key, value) for key, value in metadata if key != "site"] + [("site", str(site))]
        for metadata, site in zip(answers["metadata"], sites, strict=True)
    ]
    return answers


def cohort_flags(answers: pd.DataFrame, tokens: pd.DataFrame, config: AggregateConfig) -> pd.DataFrame:
    flags = aggregate(tokens, answers, config).flag_table
    return flags[flags["scope"] == "cohort"]


def false_alarms(answers, tokens, config, shuffles: int, cohorts: int, rng) -> dict:
    sites = np.resize([f"site-{k}" for k in range(cohorts)], len(answers))
    raised, rules = 0, {}
    for _ in range(shuffles):
        flags = cohort_flags(with_sites(answers, rng.permutation(sites)), tokens, config)
        raised += not flags.empty
        for rule in flags["rule"]:
            rules[rule] = rules.get(rule, 0) + 1
    return {
        "shuffles": shuffles,
        "cohorts": cohorts,
        "any_flag_rate": raised / shuffles,
        "flags_by_rule": rules,
    }


def subset_detection(answers, tokens, config, subsets: int, size: int, rng) -> float:
    """Share of random `size`-item subsets whose tagged cohort (site=north) raises a shortcut flag."""
    detected = 0
    for _ in range(subsets):
        chosen = set(rng.choice(answers["item_id"].to_numpy(), size=size, replace=False))
        flags = cohort_flags(
            answers[answers["item_id"].isin(chosen)], tokens[tokens["item_id"].isin(chosen)], config
        )
        detected += bool(((flags["cohort"] == "north") & flags["rule"].isin(SHORTCUT_RULES)).any())
    return detected / subsets


def item_flag_rate(answers, tokens, config) -> dict:
    """Items with an item flag, by rule: the reviewers' worklist of a whole run."""
    flags = aggregate(tokens, answers, config).flag_table
    items = flags[flags["scope"] == ITEM_SCOPE]
    return {
        "items": len(answers),
        "flagged_items": int(items["item_id"].nunique()),
        "rate": round(items["item_id"].nunique() / max(len(answers), 1), 4),
        "by_rule": {rule: int(n) for rule, n in items.groupby("rule")["item_id"].nunique().items()},
    }


def _metadata(answers: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([dict(value) for value in answers["metadata"]], index=answers.index)


def without_columns(answers: pd.DataFrame, columns) -> pd.DataFrame:
    """`answers` whose manifest metadata no longer holds `columns`."""
    answers = answers.copy()
    answers["metadata"] = [
        [(k, v) for k, v in metadata if k not in columns] for metadata in answers["metadata"]
    ]
    return answers


def strategy_check(answers, tokens, config, reseeds: int, rng) -> dict:
    """Per reseed: a random 80% of the items, no tag or site column, a new clustering seed; strategy
    flags raised, and the flagged cluster with most tagged items (purity, coverage)."""
    tagged_ids = set(answers.loc[_metadata(answers)["marker"] == "yes", "item_id"])
    raised, purity, coverage, detected = 0, [], [], 0
    for seed in range(reseeds):
        chosen = set(rng.choice(answers["item_id"].to_numpy(), size=int(0.8 * len(answers)), replace=False))
        result = aggregate(
            tokens[tokens["item_id"].isin(chosen)],
            without_columns(answers[answers["item_id"].isin(chosen)], UNNAMED),
            dataclasses.replace(config, group_by=(), cluster_seed=seed),
        )
        flagged = result.flag_table[result.flag_table["rule"] == STRATEGY_RULE]
        raised += not flagged.empty
        tagged = tagged_ids & chosen
        best = (0.0, 0.0)
        for cluster in flagged["cohort"].astype(int):
            members = set(result.clusters.loc[result.clusters["cluster"] == cluster, "item_id"])
            hits = len(members & tagged)
            best = max(best, (hits / max(len(tagged), 1), hits / len(members)))
        coverage.append(best[0])
        purity.append(best[1])
        detected += best[0] >= 0.6 and best[1] >= 0.8
    return {
        "reseeds": reseeds,
        "any_flag_rate": raised / reseeds,
        "detected_rate": detected / reseeds,  # a flagged cluster ≥ 80% tagged holding ≥ 60% of them
        "purity_median": round(float(np.median(purity)), 3),
        "coverage_median": round(float(np.median(coverage)), 3),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="cases audited by each model")
    parser.add_argument("--shuffles", type=int, default=200)
    parser.add_argument("--cohorts", type=int, default=4, help="random sites per shuffle")
    parser.add_argument("--subsets", type=int, default=200)
    parser.add_argument("--subset-size", type=int, default=24)
    parser.add_argument("--reseeds", type=int, default=20, help="strategy-cluster runs per model")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--resamples", type=int, default=200, help="bootstrap resamples (flags do not use them)"
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    work = bench_folder("vlm-audit-calibration-")
    started = time.perf_counter()
    manifest = write_demo_dataset(work / "data", args.n, args.seed)
    honest = audit_outputs(manifest, work / "honest", MODEL_PATH)
    shortcut = audit_outputs(manifest, work / "shortcut", SHORTCUT_MODEL_PATH)
    audited = time.perf_counter()
    config = AggregateConfig(group_by=("site",), stats=StatsConfig(resamples=args.resamples))
    rng = np.random.default_rng(args.seed)
    result = {
        "cases": args.n,
        "seed": args.seed,
        "honest_shuffled": false_alarms(*honest, config, args.shuffles, args.cohorts, rng),
        "shortcut_detection": subset_detection(*shortcut, config, args.subsets, args.subset_size, rng),
        "honest_tagged_cohort_flagged": subset_detection(
            *honest, config, args.subsets, args.subset_size, rng
        ),
        "subsets": args.subsets,
        "subset_size": args.subset_size,
        "item_flags": {
            "honest": item_flag_rate(*honest, config),
            "shortcut": item_flag_rate(*shortcut, config),
        },
        "strategy": {
            "honest": strategy_check(*honest, config, args.reseeds, rng),
            "shortcut": strategy_check(*shortcut, config, args.reseeds, rng),
        },
        "audit_seconds": round(audited - started, 1),
        "aggregate_seconds": round(time.perf_counter() - audited, 1),
    }
    shuffled = result["honest_shuffled"]
    print(f"honest model, {args.n} cases, {args.shuffles} shuffles into {args.cohorts} random sites:")
    print(
        f"  any cohort flag in {shuffled['any_flag_rate']:.1%} of shuffles (goal <= 5%); by rule {shuffled['flags_by_rule']}"
    )
    print(f"shortcut model, {args.subsets} subsets of {args.subset_size}: tagged cohort flagged in "
          f"{result['shortcut_detection']:.1%} (goal >= 95%)")  # fmt: skip
    print(
        f"honest model, same subsets: tagged cohort flagged in {result['honest_tagged_cohort_flagged']:.1%}"
    )
    for name, figures in result["item_flags"].items():
        print(f"{name} model: {figures['flagged_items']} of {figures['items']} items with an item flag "
              f"({figures['rate']:.1%}); by rule {figures['by_rule']}")  # fmt: skip
    honest_strategy, shortcut_strategy = result["strategy"]["honest"], result["strategy"]["shortcut"]
    print(f"strategy clusters, {args.reseeds} reseeded runs without the tag and site columns: honest flagged "
          f"in {honest_strategy['any_flag_rate']:.1%} (goal <= 5%); shortcut's tagged cluster found in "
          f"{shortcut_strategy['detected_rate']:.1%} (purity median {shortcut_strategy['purity_median']:.0%}, "
          f"coverage median {shortcut_strategy['coverage_median']:.0%})")  # fmt: skip
    print(f"audits {result['audit_seconds']} s, aggregation {result['aggregate_seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
