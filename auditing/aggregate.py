"""`aggregate_run`: cohort statistics, comparisons and flags of one run, from its Parquet outputs alone."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import cache

import numpy as np
import pandas as pd

from auditing.cohorts import StatsConfig, cohort_stats, item_level
from auditing.compare import cohort_vs_rest
from auditing.flags import FlagThresholds, RaisedFlag, flag_table, part_rows
from auditing.load import join_targets
from auditing.recorded import AGGREGATE_JSON
from auditing.report.figures import heatmap, png_bytes
from auditing.rules import RuleInputs, evaluate_rules
from auditing.strategies import cluster_mean_maps, strategy_clusters
from auditing.strategy_items import strategy_items
from auditing.studies import cohort_studies, study_items
from auditing.trust import faithfulness_items, reference_agreement, trust_summary, unchecked_targets
from storage import (
    ObjectStore,
    cluster_map_folder,
    cluster_map_key,
    open_store,
    read_table,
    run_json_key,
    write_json,
    write_part,
)
from vocabulary.names import LUNG_ZONES, SHORTCUT_REGIONS
from vocabulary.regions import standard_regions

# Answer words worth a map of their own in chest radiology: findings, devices, laterality, zones, yes/no.
DEFAULT_FINDINGS = (
    "nodule", "mass", "pneumonia", "consolidation", "opacity", "effusion", "pneumothorax", "cardiomegaly",
    "atelectasis", "edema", "fracture", "device", "catheter", "tube", "pacemaker", "marker", "right", "left",
    "upper", "middle", "lower", "yes", "no",
)  # fmt: skip
AGGREGATE_PART = "part-aggregate"


@dataclass(frozen=True)
class AggregateConfig:
    """What to group by, which answer words are findings, and the flag thresholds."""

    group_by: tuple[str, ...] = ()
    findings: tuple[str, ...] | None = DEFAULT_FINDINGS
    stats: StatsConfig = field(default_factory=StatsConfig)
    thresholds: FlagThresholds = field(default_factory=FlagThresholds)
    cluster_seed: int | None = None  # the strategy clustering's seed; None: derived from the run id


@dataclass
class Aggregate:
    """Everything `aggregate` derives; each frame is one output table, the flags are the rules' records."""

    items: pd.DataFrame
    cohort_stats: pd.DataFrame
    cohort_regions: pd.DataFrame
    comparisons: pd.DataFrame
    flags: list[RaisedFlag]  # in `auditing.rules.RULES` order
    trust: pd.DataFrame
    studies: pd.DataFrame
    clusters: pd.DataFrame  # every whole-answer map's strategy cluster (CLUSTER_COLUMNS)
    cluster_maps: pd.DataFrame  # each cluster's mean map (`cluster_mean_maps`)

    @property
    def flag_table(self) -> pd.DataFrame:
        """The flags as the flags table's frame, with run_id (for pandas and dashboards)."""
        return flag_table(self.flags)


def aggregate(
    tokens: pd.DataFrame,
    answers: pd.DataFrame,
    config: AggregateConfig,
    faithfulness: pd.DataFrame | None = None,
    mentions: pd.DataFrame | None = None,
) -> Aggregate:
    """Cohort statistics, cohort-vs-rest comparisons and flags from the tokens and answers tables.

    The explanation method of the run's maps raises the map-based flags; where a faithfulness sample
    exists, the same shortcut rules run on each method's sample maps (the references included), and
    trust flags say which cohorts' maps disagree with the references. The share rules leave out maps
    that carry no evidence (flat maps; sampled items whose references found none). The `mentions`
    table says which answers assert only absences (`off_anatomy`).
    """
    stats_config = config.stats
    thresholds = config.thresholds
    targets = join_targets(tokens, answers, findings=config.findings)
    items = item_level(targets, stats_config.common_grid)
    stats, regions = cohort_stats(items, config.group_by, stats_config)
    comparisons = _concat(
        [cohort_vs_rest(items, g, resamples=stats_config.resamples) for g in config.group_by]
    )
    method = str(tokens["method"].iloc[0]) if len(tokens) else "unknown"
    studies = cohort_studies(study_items(targets), config.group_by, stats_config, thresholds)
    trust, sample, no_evidence = pd.DataFrame(), pd.DataFrame(), set()
    if faithfulness is not None and len(faithfulness):
        sample = faithfulness_items(faithfulness, answers, config.findings)
        agreements = reference_agreement(sample, thresholds)
        trust = trust_summary(agreements, config.group_by)
        no_evidence = unchecked_targets(agreements)
    # the share rules: every method's maps that carry evidence, one family of tests for the whole run
    share_maps = [(method, items)]
    if len(sample):
        share_maps += [(f"{name} (faithfulness sample)", rows) for name, rows in sample.groupby("method")]
    share_comparisons = _concat(
        [
            cohort_vs_rest(
                with_evidence(rows, thresholds.flat_entropy, no_evidence),
                grouping,
                metrics=[f"share_{region}" for region in SHORTCUT_REGIONS],
                resamples=stats_config.resamples,
            ).assign(method=label)
            for label, rows in share_maps
            for grouping in config.group_by
        ]
    )
    # strategies: clusters of the whole-answer maps, whatever the manifest's columns name
    answer_items = strategy_items(items, targets)
    clusters = strategy_clusters(
        answer_items, seed=_cluster_seed(items, config.cluster_seed), min_items=thresholds.min_cluster_items
    )
    inputs = RuleInputs(
        method=method,
        items=items,
        stats=stats,
        studies=studies,
        trust=trust,
        share_comparisons=share_comparisons,
        strategy_items=answer_items,
        clusters=clusters,
        uniform_shares=uniform_shares(items),
        uniform_lung_shares=uniform_lung_shares(items),
        metadata_columns=tuple(metadata_columns(answers)),
        resamples=stats_config.resamples,
        mentions=mentions if mentions is not None else pd.DataFrame(),
    )
    return Aggregate(
        items,
        stats,
        regions,
        comparisons,
        evaluate_rules(inputs, thresholds),
        trust,
        studies,
        clusters,
        cluster_mean_maps(answer_items, clusters),
    )


def _cluster_seed(items: pd.DataFrame, seed: int | None) -> int:
    """The given seed, or one derived from the run ids: the same run always clusters the same way."""
    if seed is not None:
        return seed
    text = ",".join(sorted(map(str, items["run_id"].unique()))) if len(items) else ""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def metadata_columns(answers: pd.DataFrame) -> list[str]:
    """The item frame's columns that hold the manifest's metadata (as `expand_metadata` names them)."""
    keys = dict.fromkeys(key for value in answers["metadata"] if value is not None for key, _ in value)
    return [f"meta_{key}" if key in answers.columns else key for key in keys]


def with_evidence(items: pd.DataFrame, flat_entropy: float, no_evidence: set[tuple]) -> pd.DataFrame:
    """The item rows whose maps carry evidence: not flat (normalised entropy below `flat_entropy`), and
    not a sampled item and target whose references found no evidence (`no_evidence` keys)."""
    keys = zip(items["run_id"], items["item_id"], items["target_class"], strict=True)
    checked = [key not in no_evidence for key in keys]
    return items[(items["entropy"] < flat_entropy) & np.asarray(checked, dtype=bool)]


@cache
def grid_uniform_shares(grid: tuple[int, int]) -> dict[str, float]:
    """The share of each region a uniform map on `grid` puts there."""
    return {name: float(weights.mean()) for name, weights in standard_regions(grid).items()}


def _grids(items: pd.DataFrame) -> Counter:
    return Counter(
        (int(rows), int(cols)) for rows, cols in zip(items["grid_h"], items["grid_w"], strict=True)
    )


def uniform_shares(items: pd.DataFrame) -> dict[str, float]:
    """The share of each region a uniform map puts there, on the items' grids (averaged over items)."""
    grids = _grids(items)
    total = sum(grids.values())
    shares: dict[str, float] = {}
    for grid, count in grids.items():
        for name, share in grid_uniform_shares(grid).items():
            shares[name] = shares.get(name, 0.0) + share * count / total
    return shares


def uniform_lung_shares(items: pd.DataFrame) -> dict[tuple[int, int], float]:
    """The lung zones' share of a uniform map, per grid of the items."""
    return {grid: sum(grid_uniform_shares(grid)[zone] for zone in LUNG_ZONES) for grid in _grids(items)}


def aggregate_run(
    out_uri: str, run_id: str, config: AggregateConfig | None = None, *, endpoint_url: str | None = None
) -> Aggregate:
    """Aggregate one run's outputs and write its cohort_stats, cohort_regions, cohort_comparisons,
    cohort_trust, cohort_studies, clusters and flags tables (`<table>/run_id=<id>/part-aggregate.parquet`),
    each strategy cluster's mean map (`cluster_maps/run_id=<id>/cluster-<k>.png`) and the settings
    (`runs/run_id=<id>/aggregate.json`). Rerunnable without the model; a rerun replaces them all."""
    config = config or AggregateConfig()
    tokens = read_table(out_uri, "tokens", run_id=run_id, endpoint_url=endpoint_url).to_pandas()
    answers = read_table(out_uri, "answers", run_id=run_id, endpoint_url=endpoint_url).to_pandas()
    faithfulness = read_table(out_uri, "faithfulness", run_id=run_id, endpoint_url=endpoint_url).to_pandas()
    mentions = read_table(out_uri, "mentions", run_id=run_id, endpoint_url=endpoint_url).to_pandas()
    result = aggregate(tokens, answers, config, faithfulness, mentions)
    store = open_store(out_uri, endpoint_url=endpoint_url)
    write_json(store, run_json_key(run_id, AGGREGATE_JSON), aggregate_record(config))
    for table, frame in (
        ("cohort_stats", result.cohort_stats),
        ("cohort_regions", result.cohort_regions),
        ("cohort_comparisons", result.comparisons),
        ("cohort_trust", result.trust),
        ("cohort_studies", result.studies),
        ("clusters", result.clusters),
    ):
        write_part(store, table, run_id, AGGREGATE_PART, _without_run_id(frame))
    write_part(store, "flags", run_id, AGGREGATE_PART, part_rows(result.flags))
    write_cluster_maps(store, run_id, result.cluster_maps)
    return result


def write_cluster_maps(store: ObjectStore, run_id: str, cluster_maps: pd.DataFrame) -> None:
    """Each cluster's mean map as a heatmap PNG (min–max within the map, on neutral grey); stale ones go."""
    wanted = set()
    for row in cluster_maps.itertuples(index=False):
        key = cluster_map_key(run_id, int(row.cluster))
        cell_map = np.asarray(row.mean_map, dtype=np.float32).reshape(int(row.grid_h), int(row.grid_w))
        store.write_bytes(key, png_bytes(heatmap(cell_map, None)))
        wanted.add(key)
    for key in store.list(cluster_map_folder(run_id) + "/"):
        if key not in wanted:
            store.delete(key)


def aggregate_record(config: AggregateConfig) -> dict:
    """What aggregate.json records: the grouping, the findings vocabulary and every flag threshold."""
    return {
        "group_by": list(config.group_by),
        "findings": list(config.findings) if config.findings is not None else None,
        "thresholds": asdict(config.thresholds),
        "cluster_seed": config.cluster_seed,
    }


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate comparison frames; an empty frame when no grouping was asked for."""
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _without_run_id(frame: pd.DataFrame) -> list[dict]:
    """Rows for a part file (run_id lives in the path, not in the file; pandas' NaN gaps become nulls)."""
    frame = frame.drop(columns=["run_id"], errors="ignore")
    return frame.astype(object).where(frame.notna(), None).to_dict("records")
