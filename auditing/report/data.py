"""What the report reads: one run's tables and run.json, its images, and which items form a cohort."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from PIL import Image

from auditing.cohorts import cohort_labels
from auditing.flags import FlagThresholds
from auditing.load import expand_metadata
from auditing.recorded import recorded_thresholds
from auditing.report.figures import HEATMAP_SIZE, THUMBNAIL_SIZE, thumbnail
from storage import (
    DEFAULT_MAX_IMAGE_BYTES,
    FlagRecord,
    InputScope,
    ObjectNotFound,
    ObjectStore,
    StorageError,
    StoreCache,
    decode_image,
    parent_uri,
    read_run,
    read_table,
    resolve_uri,
)


class RunNotFound(LookupError):
    """The output root holds neither a run.json nor answers for the run id."""


@dataclass
class RunTables:
    """One run's outputs as pandas frames (empty frames where a table has no parts)."""

    run_id: str
    run: dict[str, Any] | None  # run.json, None when absent
    answers: pd.DataFrame  # every item, metadata still as a map column
    ok_answers: pd.DataFrame  # status "ok", one column per metadata key, in manifest order
    errors: pd.DataFrame
    stats: pd.DataFrame  # cohort_stats
    regions: pd.DataFrame  # cohort_regions
    flags: list[FlagRecord]  # the flags table's rows, in the order the aggregation wrote them
    trust: pd.DataFrame  # cohort_trust
    studies: pd.DataFrame  # cohort_studies
    clusters: pd.DataFrame  # every whole-answer map's strategy cluster
    thresholds: FlagThresholds | None  # those the run's flags were raised with; None: never aggregated


def _read(store: ObjectStore, table: str, run_id: str) -> pd.DataFrame:
    return read_table(store, table, run_id=run_id).to_pandas()


def flag_records(flags: pd.DataFrame) -> list[FlagRecord]:
    """The flags table's rows as `FlagRecord`s (NaN read as None; `auditing.rules.rule_title` words the rule)."""
    return [FlagRecord.from_row(row) for row in flags.to_dict("records")]


def load_run(store: ObjectStore, run_id: str) -> RunTables:
    """Read the run's tables and the settings its aggregation recorded. The report computes nothing of
    its own: without an aggregation it shows no cohorts and no flags, and says how to get them."""
    try:
        run = read_run(store, run_id)
    except ObjectNotFound:
        run = None
    answers = _read(store, "answers", run_id)
    if run is None and answers.empty:
        raise RunNotFound(
            f"no run {run_id!r} under {store.root}: neither runs/run_id={run_id}/run.json nor answers parts "
            "exist; check the output root and the run id"
        )
    stats, regions = _read(store, "cohort_stats", run_id), _read(store, "cohort_regions", run_id)
    flags, trust = _read(store, "flags", run_id), _read(store, "cohort_trust", run_id)
    ok = answers[answers["status"] == "ok"]
    ok = ok.sort_values(["row_number", "item_id"], na_position="last", kind="stable")
    return RunTables(
        run_id=run_id,
        run=run,
        answers=answers,
        ok_answers=expand_metadata(ok.reset_index(drop=True)),
        errors=_read(store, "errors", run_id),
        stats=stats,
        regions=regions,
        flags=flag_records(flags),
        trust=trust,
        studies=_read(store, "cohort_studies", run_id),
        clusters=_read(store, "clusters", run_id),
        thresholds=recorded_thresholds(store, run_id),
    )


def cohort_members(answers: pd.DataFrame, grouping: str, cohort: str) -> pd.DataFrame:
    """The ok answers in a cohort (the whole run for ("all", "all")), in manifest order."""
    if grouping == "all":
        return answers
    columns = grouping.split("+")
    if any(column not in answers.columns for column in columns):
        return answers.iloc[0:0]
    return answers[cohort_labels(answers, columns) == cohort]


@dataclass(frozen=True)
class LoadedImage:
    """An image for the report, or why there is none (`image` None and `problem` set)."""

    uri: str
    image: Image.Image | None
    problem: str | None = None


class ImageReader:
    """Reads item images the way the pipeline does (absolute URI, read with storage, decoded by
    `decode_image`), keeping small copies only. A relative URI is resolved against the manifest's
    folder from run.json, and every image is confined as the run confined it: to the manifest's own
    store or the run's `allowed_inputs`, regular files within its `max_image_bytes` (`InputScope`)."""

    def __init__(self, run: dict[str, Any] | None, *, endpoint_url: str | None = None) -> None:
        config = (run or {}).get("config") or {}
        manifest_uri = (run or {}).get("manifest_uri") or config.get("manifest")
        self._base = parent_uri(manifest_uri) if manifest_uri else None
        self._scope = (
            InputScope(
                manifest_uri,
                tuple(config.get("allowed_inputs") or ()),
                config.get("max_image_bytes") or DEFAULT_MAX_IMAGE_BYTES,
            )
            if manifest_uri
            else None
        )
        self._objects = StoreCache(endpoint_url=endpoint_url)
        self._cache: dict[str, LoadedImage] = {}

    def read(self, image_uri: str | None, *, keep: bool = True) -> LoadedImage:
        """The decoded image, shrunk to the report's largest size; never raises for a bad image.
        `keep=False` does not cache it (a cohort's mean image reads many images once each)."""
        if not image_uri:
            return LoadedImage("", None, "the item has no image URI")
        if image_uri in self._cache:
            return self._cache[image_uri]
        loaded = self._load(image_uri)
        if keep:
            self._cache[image_uri] = loaded
        return loaded

    def _load(self, image_uri: str) -> LoadedImage:
        if self._scope is None:  # without the manifest's location there is no store to confine reads to
            return LoadedImage(image_uri, None, "no manifest location in run.json to read images from")
        try:
            uri = resolve_uri(image_uri, self._base or "/")  # absolute URIs ignore the base
        except StorageError as exc:
            return LoadedImage(image_uri, None, f"cannot resolve the image URI ({exc})")
        try:
            image = decode_image(self._scope.read(uri, self._objects), uri)
        except (StorageError, OSError) as exc:
            return LoadedImage(uri, None, f"{type(exc).__name__}: {exc}")
        return LoadedImage(uri, thumbnail(image, max(HEATMAP_SIZE, THUMBNAIL_SIZE)))
