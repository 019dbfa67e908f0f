"""Flags: each raised by a named rule (`auditing.rules`), with its threshold and the evidence.

Rules over cohorts compare a cohort with the audit's baseline: the rest of its run, for the same
target class (a bootstrap CI of the difference, and a ratio). The rest rather than the whole run,
so that a large cohort cannot hide its own excess by raising the baseline.

A flag is a `storage.FlagRecord` from the rule that raises it to the report that shows it; in memory
it also knows its run (`RaisedFlag`), which on disk is the flags part's path, not a column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from storage import FLAGS_SCHEMA, FlagRecord

# the flags table's columns in its order; run_id is the part's path (hive partition), a column in memory
FLAG_COLUMNS = ("run_id", *FLAGS_SCHEMA.names)
_FLOAT_COLUMNS = tuple(field.name for field in FLAGS_SCHEMA if pa.types.is_float64(field.type))


@dataclass(frozen=True)
class FlagThresholds:
    """Thresholds of the flag rules; each flag row records the one that raised it, and aggregate.json
    all of them (each rule lists the fields it reads: `auditing.rules.Rule.thresholds`)."""

    # a cohort's border/corner share at least this × the rest's and × what a uniform map puts there ...
    share_ratio: float = 1.5
    share_margin: float = 0.02  # ... (cohort − rest) at least this ...
    # ... and significant: Benjamini–Hochberg q of the one-sided Mann–Whitney p at most this, over
    # every share test of the run (cohorts × targets × regions × methods)
    false_discovery_rate: float = 0.05
    # maps at least this flat (normalised entropy) carry no evidence of where the model looked, and
    # are left out of the share rules (so are sampled items whose references have no evidence)
    flat_entropy: float = 0.9
    min_items: int = 5
    # a strategy cluster smaller than this is neither tested nor flagged
    min_cluster_items: int = 10
    roi_hit_rate: float = 0.5  # pointing-game hit rate below this (the upper end of its Wilson interval)
    off_anatomy_lung_share: float = 0.35  # an item whose lung zones hold less than this share ...
    # ... but an answer asserting absence ("no", "normal") rests on everywhere the finding is not, so a
    # diffuse map is expected: it is flagged when its lung share is below this × a uniform map's
    off_anatomy_absence_ratio: float = 0.5
    # a method's peak lies in a reference's evidence set in fewer items than this, with 95% confidence
    # (the upper end of the Wilson interval below it)
    trust_peak_rate: float = 0.5
    # a reference's evidence set: cells whose drop is at least this fraction of its largest drop (and
    # above its noise floor) ...
    evidence_fraction: float = 0.5
    # ... and at least this many logits; below it the reference is noise and the item not checkable
    trust_min_reference_drop: float = 0.1
    # maps at least this rank-correlated with those of a model with scrambled top layers barely depend on
    # what it learned (Adebayo et al.): a trust row that agrees with its reference is then only doubtful
    randomization_doubt: float = 0.5
    # a longitudinal item barely looks at the prior when less than this share of its image relevance
    # lies on it; a cohort is flagged when more than half of its items do (Wilson interval above 1/2)
    prior_floor: float = 0.1


@dataclass(frozen=True)
class RaisedFlag(FlagRecord):
    """A flag as a rule raises it: the flags table's record and the run it belongs to."""

    run_id: str = ""


def cohort_key(row: tuple) -> dict[str, str]:
    """The run, grouping, cohort and target class of a cohort-level row (a frame's itertuples row)."""
    return {
        "run_id": row.run_id,
        "grouping": row.grouping,
        "cohort": row.cohort,
        "target_class": row.target_class,
    }


def cohort_phrase(grouping: str, cohort: str) -> str:
    """How a message names a cohort: "site=north", or "the whole run" for the ("all", "all") cohort."""
    return "the whole run" if grouping == "all" else f"{grouping}={cohort}"


def part_rows(flags: Sequence[FlagRecord]) -> list[dict]:
    """The flags as rows of a flags part: the table's columns only (its run is the part's path)."""
    return [{name: getattr(flag, name) for name in FLAGS_SCHEMA.names} for flag in flags]


def flag_table(flags: Sequence[RaisedFlag]) -> pd.DataFrame:
    """The flags as a frame in the flags table's column order, run_id first. Fields left None are left
    out of the row, so a column no flag sets is an all-NaN float column, as when read back."""
    rows = [
        {"run_id": flag.run_id, **{key: value for key, value in row.items() if value is not None}}
        for flag, row in zip(flags, part_rows(flags), strict=True)
    ]
    frame = pd.DataFrame(rows, columns=list(FLAG_COLUMNS))
    return frame.astype(dict.fromkeys(_FLOAT_COLUMNS, float))
