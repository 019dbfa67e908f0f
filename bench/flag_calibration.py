"""Do the cohort flags cry wolf, and do they still catch the shortcut?

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

Only the stored Parquet outputs are re-aggregated (no model runs after the two audits).

    python bench/flag_calibration.py                  # 200 cases, 200 shuffles, 200 subsets
    python bench/flag_calibration.py --n 60 --shuffles 20 --subsets 20
"""

from __future__ import annotations

import argparse
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
from phantom import MODEL_PATH, SHORTCUT_MODEL_PATH
from phantom.demo import write_demo_dataset
from storage import read_table

SEED = 23_000  # held out: training uses seeds < 10_000, the reports 20_000, the other benches 21_000-22_000
SHORTCUT_RULES = ("corners_share_above_baseline", "border_share_above_baseline")


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
    run_id = audit(config)["run_id"]
    answers = read_table(str(out), "answers", run_id=run_id).to_pandas().assign(run_id=run_id)
    tokens = read_table(str(out), "tokens", run_id=run_id).to_pandas().assign(run_id=run_id)
    return answers, tokens


def with_sites(answers: pd.DataFrame, sites: np.ndarray) -> pd.DataFrame:
    """`answers` whose metadata `site` is replaced by `sites` (one per row)."""
    answers = answers.copy()
    answers["metadata"] = [
        [(key, value) for key, value in metadata if key != "site"] + [("site", str(site))]
        for metadata, site in zip(answers["metadata"], sites, strict=True)
    ]
    return answers


def cohort_flags(answers: pd.DataFrame, tokens: pd.DataFrame, config: AggregateConfig) -> pd.DataFrame:
    flags = aggregate(tokens, answers, config).flags
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="cases audited by each model")
    parser.add_argument("--shuffles", type=int, default=200)
    parser.add_argument("--cohorts", type=int, default=4, help="random sites per shuffle")
    parser.add_argument("--subsets", type=int, default=200)
    parser.add_argument("--subset-size", type=int, default=24)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--resamples", type=int, default=200, help="bootstrap resamples (flags do not use them)"
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vlm-audit-calibration-"))
    # a temporary Prefect server of its own, quiet, with no telemetry
    for key, value in (("PREFECT_LOGGING_LEVEL", "WARNING"), ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
                       ("PREFECT_HOME", str(work / "prefect"))):  # fmt: skip
        os.environ.setdefault(key, value)
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
    print(f"audits {result['audit_seconds']} s, aggregation {result['aggregate_seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
