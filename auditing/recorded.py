"""What a run's aggregation recorded beside its tables: `runs/run_id=<id>/aggregate.json`."""

from __future__ import annotations

from auditing.flags import FlagThresholds
from storage import ObjectNotFound, ObjectStore, read_json, run_json_key

AGGREGATE_JSON = "aggregate.json"  # the grouping, findings, thresholds and seed the flags were raised with


def recorded_thresholds(store: ObjectStore, run_id: str) -> FlagThresholds | None:
    """The thresholds the run's last aggregation used, None where it never ran."""
    try:
        return FlagThresholds(**read_json(store, run_json_key(run_id, AGGREGATE_JSON))["thresholds"])
    except ObjectNotFound:
        return None
