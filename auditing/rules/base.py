"""The interface every flag rule implements, and what aggregation hands it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import pandas as pd

from auditing.bootstrap import DEFAULT_RESAMPLES
from auditing.flags import FlagThresholds, RaisedFlag


@dataclass(frozen=True)
class RuleName:
    """One name a rule raises flags under, with the plain-language title shown beside it (a clinician
    reads the title, an engineer greps for the name)."""

    name: str
    title: str
    # the metric of the table the rule marks that this name tests, where it tests one: the dashboards
    # join a flag to the comparison row it came from on it
    metric: str | None = None


@dataclass(frozen=True)
class RuleInputs:
    """What aggregation computed for one run, that rules read; what a rule does not read may be left out
    (an empty frame: a rule raises nothing on one)."""

    method: str  # the explanation method of the run's maps
    # one row per (item, target class): `auditing.cohorts.item_level`
    items: pd.DataFrame = field(default_factory=pd.DataFrame)
    stats: pd.DataFrame = field(default_factory=pd.DataFrame)  # cohort_stats
    studies: pd.DataFrame = field(default_factory=pd.DataFrame)  # cohort_studies
    # cohort_trust (empty without a faithfulness sample)
    trust: pd.DataFrame = field(default_factory=pd.DataFrame)
    # border and corner shares, cohort against rest, of every method's maps that carry evidence
    # (`cohort_vs_rest` rows with a `method` column: the run's method and each sampled one)
    share_comparisons: pd.DataFrame = field(default_factory=pd.DataFrame)
    # the whole-answer maps that were clustered (`strategy_items`)
    strategy_items: pd.DataFrame = field(default_factory=pd.DataFrame)
    clusters: pd.DataFrame = field(default_factory=pd.DataFrame)  # their clusters (CLUSTER_COLUMNS)
    # each region's share under a uniform map over the run's grids, and the lung zones' per grid
    uniform_shares: Mapping[str, float] = field(default_factory=dict)
    uniform_lung_shares: Mapping[tuple[int, int], float] = field(default_factory=dict)
    # the manifest's columns among the items' (cluster messages name them)
    metadata_columns: tuple[str, ...] = ()
    resamples: int = DEFAULT_RESAMPLES  # bootstrap resamples of a rule's own comparisons
    # the mentions table's rows (with run_id): what each answer asserts, finding by finding
    mentions: pd.DataFrame = field(default_factory=pd.DataFrame)


class Rule(ABC):
    """A flag rule: the names it raises, where (scope), the output table whose rows its flags are about,
    the thresholds it reads, one verb and the sentence the report prints for it. One module per rule
    under `auditing.rules`, registered once in `auditing.rules.RULES`."""

    names: ClassVar[tuple[RuleName, ...]]
    scope: ClassVar[str]  # a vocabulary.names flag scope
    # the table whose rows its flags mark: the report and the dashboard views join its flags there
    marks: ClassVar[str]
    thresholds: ClassVar[tuple[str, ...]]  # the `FlagThresholds` fields it reads

    @abstractmethod
    def evaluate(self, inputs: RuleInputs, thresholds: FlagThresholds) -> list[RaisedFlag]:
        """The flags the rule raises on one aggregation's inputs, in a stable order."""

    @abstractmethod
    def describe(self, thresholds: FlagThresholds) -> str:
        """What the rule flags, in one or two plain sentences with the thresholds the run used."""
