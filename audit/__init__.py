"""Cohort statistics, comparisons, flags and faithfulness summaries: pure functions over the Parquet tables."""

from audit.aggregate import DEFAULT_FINDINGS, Aggregate, AggregateConfig, aggregate, aggregate_run
from audit.bootstrap import difference_ci, mean_ci
from audit.cohorts import StatsConfig, cohort_stats, item_level
from audit.compare import cohort_vs_rest, compare_runs
from audit.dashboards import create_views
from audit.flags import FlagThresholds
from audit.load import join_targets, load_targets
from audit.report import build_report

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
