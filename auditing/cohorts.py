"""Cohort statistics: per (cohort, target class) maps, region shares, concentration and ROI hits, with CIs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from auditing.bootstrap import mean_ci
from auditing.evidence import wilson_interval
from auditing.load import SHARE_COLUMNS
from auditing.resample import mass_distribution
from storage import COHORT_METRICS

SCALAR_METRICS = COHORT_METRICS  # summarised per cohort: cohort_stats' <metric>_mean, _ci_low, _ci_high
ITEM_KEYS = ["run_id", "item_id", "target_class"]
MISSING = "(missing)"  # the label of a missing metadata value


@dataclass(frozen=True)
class StatsConfig:
    """How cohorts are summarised: the common grid of their mean maps, the bootstrap's resamples,
    confidence level and seed (what they are grouped by is `AggregateConfig.group_by`)."""

    common_grid: tuple[int, int] = (16, 16)
    resamples: int = 1000
    level: float = 0.95
    seed: int = 0


def item_level(targets: pd.DataFrame, grid: tuple[int, int]) -> pd.DataFrame:
    """One row per (run, item, target class): metrics averaged over images, the map as a distribution
    on the common grid (`mass_map`)."""
    frame = targets.copy()
    frame["mass_map"] = [
        mass_distribution(flat, (int(h), int(w)), grid)
        for flat, h, w in zip(frame["image_relevance"], frame["grid_h"], frame["grid_w"], strict=True)
    ]
    frame["roi_hit"] = frame["roi_hit"].astype("float64")
    metrics = [*SCALAR_METRICS, *SHARE_COLUMNS]
    metadata = [
        c for c in frame.columns if c not in {*metrics, "mass_map", "image_relevance", "text_relevance"}
    ]
    grouped = frame.groupby(ITEM_KEYS, sort=False, dropna=False)
    items = grouped[metrics].mean()
    items["mass_map"] = grouped["mass_map"].apply(lambda maps: np.mean(np.stack(list(maps)), axis=0))
    items["target_rows"] = grouped.size()
    first = grouped[[c for c in metadata if c not in ITEM_KEYS]].first()
    return pd.concat([items, first], axis=1).reset_index()


def cohort_label(values: Iterable[Any]) -> str:
    """The cohort name of one item's values of a grouping's columns, in order: "east+A"; a missing
    value (None, NaN) is "(missing)". Statistics, comparisons and the report all name cohorts so.

    >>> cohort_label(["east", None])
    'east+(missing)'
    """
    return "+".join(MISSING if pd.isna(value) else str(value) for value in values)


def cohort_labels(frame: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """`cohort_label` of every row of `frame` over `columns` (same index, object dtype)."""
    rows = zip(*(frame[column] for column in columns), strict=True)
    return pd.Series([cohort_label(values) for values in rows], index=frame.index, dtype=object)


def cohorts(items: pd.DataFrame, group_by: Sequence[str]) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """(grouping, cohort, rows) for the whole run and for every value of every grouping."""
    yield "all", "all", items
    for grouping in group_by:
        columns = grouping.split("+")
        missing = [c for c in columns if c not in items.columns]
        if missing:
            raise KeyError(f"cannot group by {missing}: not in the manifest metadata {sorted(items.columns)}")
        for values, rows in items.groupby(columns, dropna=False, sort=True):
            values = values if isinstance(values, tuple) else (values,)
            yield grouping, cohort_label(values), rows


def cohort_stats(
    items: pd.DataFrame, group_by: Sequence[str], config: StatsConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (run, grouping, cohort, target class): a summary row and region-share rows (long format).

    `group_by` names manifest metadata columns; "site+scanner" groups by both at once. Every audit also
    gets the whole-run cohort ("all", "all")."""
    summaries, regions = [], []
    for (run_id, target), run_items in items.groupby(["run_id", "target_class"], sort=True):
        for grouping, cohort, rows in cohorts(run_items, group_by):
            key = {"run_id": run_id, "grouping": grouping, "cohort": cohort, "target_class": target}
            maps = np.stack(list(rows["mass_map"]))
            summary = {
                **key,
                "n_items": int(rows["item_id"].nunique()),
                "n_targets": int(rows["target_rows"].sum()),
                "grid_h": config.common_grid[0],
                "grid_w": config.common_grid[1],
                "mean_map": maps.mean(axis=0).ravel().astype(np.float32),
                "se_map": (
                    maps.std(axis=0, ddof=1) / np.sqrt(len(maps)) if len(maps) > 1 else np.zeros_like(maps[0])
                )
                .ravel()
                .astype(np.float32),
                "n_roi": int(rows["roi_hit"].notna().sum()),
            }
            for metric in SCALAR_METRICS:
                mean, low, high = mean_ci(
                    rows[metric], resamples=config.resamples, level=config.level, seed=config.seed
                )
                if metric == "roi_hit":  # a rate: a binomial interval, not degenerate at 0 or n hits
                    hits = rows[metric].dropna()
                    low, high = wilson_interval(int(hits.sum()), len(hits), config.level)
                summary |= {f"{metric}_mean": mean, f"{metric}_ci_low": low, f"{metric}_ci_high": high}
            summaries.append(summary)
            for column in SHARE_COLUMNS:
                mean, low, high = mean_ci(
                    rows[column], resamples=config.resamples, level=config.level, seed=config.seed
                )
                regions.append(
                    {
                        **key,
                        "region": column.removeprefix("share_"),
                        "mean": mean,
                        "ci_low": low,
                        "ci_high": high,
                        "n_items": summary["n_items"],
                    }
                )
    return pd.DataFrame(summaries), pd.DataFrame(regions)
