"""Cohort statistics, comparisons, flags, trust summaries of the faithfulness sample, the HTML report
(`auditing.report`) and dashboard views: pure functions over the Parquet tables."""

from auditing.aggregate import DEFAULT_FINDINGS, Aggregate, AggregateConfig, aggregate, aggregate_run
from auditing.bootstrap import difference_ci, mean_ci
from auditing.cohorts import StatsConfig, cohort_stats, item_level
from auditing.compare import cohort_vs_rest, compare_runs
from auditing.dashboards import create_views
from auditing.flags import FlagThresholds
from auditing.load import join_targets, load_targets
from auditing.report import build_report

__all__ = [
    "DEFAULT_FINDINGS",
    "Aggregate",
    "AggregateConfig",
    "FlagThresholds",
    "StatsConfig",
    "aggregate",
    "aggregate_run",
    "build_report",
    "cohort_stats",
    "cohort_vs_rest",
    "compare_runs",
    "create_views",
    "difference_ci",
    "item_level",
    "join_targets",
    "load_targets",
    "mean_ci",
]
