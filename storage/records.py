"""Typed output records: one dataclass per row of an output table (and one for run.json), each field
with its Arrow type and what it means. The tables' Parquet schemas are generated from them
(`arrow_schema`), docs/outputs.md lists exactly their fields (a test checks), and the pipeline, the
report and the CLI build and read rows through them.

``run_id`` is not a field of the table records: it is the hive partition in the path
(``<table>/run_id=<id>/``) and a column only in memory, when a reader asks for the partitioning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from vocabulary.names import ASSERTIONS, COHORT_SCOPE, FLAG_SCOPES, REGION_NAMES, SIDES, TARGET_KINDS

STAGES = ("manifest", "image", "generate", "explain", "mentions", "write")
ANSWER_STATUSES = ("ok", "error")
RUN_STATUSES = ("running", "completed", "failed")
REGION_SHARES_TYPE = pa.struct([(name, pa.float32()) for name in REGION_NAMES])
ARROW, DESCRIPTION, REQUIRED, ALLOWED = "arrow", "description", "required", "allowed"


def column(
    arrow: pa.DataType | None,
    description: str,
    *,
    required: bool = False,
    allowed: tuple[str, ...] | None = None,
    default: Any = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A record field: its Arrow type (None for run.json's JSON-only fields), its meaning, whether it
    may be null, and the values it may take (an enumeration)."""
    metadata = {ARROW: arrow, DESCRIPTION: description, REQUIRED: required, ALLOWED: allowed}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=MISSING if required else default, metadata=metadata)


class Record:
    """What every output record can do: become a row (a dict of its fields), come from one."""

    def to_row(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Record:
        """The record of a row read back (a dict, a pandas Series or a DataFrame row's `_asdict()`);
        columns it does not define (run_id, joined metadata) are left out, NaN becomes None."""
        values = {}
        for item in fields(cls):
            if item.name in row:
                value = row[item.name]
                values[item.name] = None if isinstance(value, float) and value != value else value
        return cls(**values)

    @classmethod
    def descriptions(cls) -> dict[str, str]:
        return {item.name: item.metadata[DESCRIPTION] for item in fields(cls)}


def arrow_schema(record: type[Record]) -> pa.Schema:
    """The Parquet schema of a table record: its fields in order, their descriptions as field metadata."""
    return pa.schema(
        [
            pa.field(
                item.name,
                item.metadata[ARROW],
                nullable=not item.metadata[REQUIRED],
                metadata={DESCRIPTION: item.metadata[DESCRIPTION]},
            )
            for item in fields(record)
        ]
    )


def allowed_values(record: type[Record]) -> dict[str, tuple[str, ...]]:
    """The enumerated fields of a record and the values each may take (null is always allowed)."""
    return {item.name: item.metadata[ALLOWED] for item in fields(record) if item.metadata[ALLOWED]}


_STRING, _F32, _F64 = pa.string(), pa.float32(), pa.float64()


@dataclass(frozen=True)
class AnswerRecord(Record):
    """One audited item: its answer, or status "error" (the reason is in the errors table)."""

    item_id: str = column(
        _STRING,
        'the manifest\'s `item_id` (an integer in JSONL or Parquet as its digits: `7` → `"7"`, and so is a '
        'whole float: `8.0` → `"8"`), or 16 hex chars of sha256(resolved image URI + "\\n" + question)',
        required=True,
    )
    row_number: int | None = column(
        pa.int64(), "1-based index of the row in the manifest (header and blank lines not counted)"
    )
    image_uri: str | None = column(
        _STRING,
        "resolved image URI: absolute local path or `s3://bucket/key` (the first one for a study item)",
    )
    image_uris: list[str] | None = column(
        pa.list_(_STRING),
        "every URI of the item's `image` cell, resolved (images, DICOM series, NIfTI volumes)",
    )
    image_labels: list[str] | None = column(pa.list_(_STRING), "the manifest's `image_labels`, or null")
    n_images: int | None = column(pa.int16(), "images in the prompt (a volume counts its sampled slices)")
    question: str | None = column(_STRING, "the question, outer whitespace stripped")
    answer: str | None = column(
        _STRING,
        "the answer explained: generated, or the manifest's logged `answer` (null when `status` is `error`)",
    )
    answer_source: str | None = column(
        _STRING,
        "`generated`, or `given` when the manifest's `answer` column held the answer the audited model gave "
        "(explained as given, teacher-forced, nothing generated)",
    )
    status: str | None = column(
        _STRING, "`ok` or `error` (the reason is in the errors table)", allowed=ANSWER_STATUSES
    )
    n_targets: int | None = column(
        pa.int32(), "number of explained targets (rows in tokens for this item and image)"
    )
    prompt_tokens: list[str] | None = column(
        pa.list_(_STRING),
        "the prompt's tokens as the tokenizer produced them (text relevance aligns with these)",
    )
    prompt_token_special: list[bool] | None = column(
        pa.list_(pa.bool_()), "true where the token is a chat-template or special token"
    )
    image_width: int | None = column(
        pa.int32(), "original image width in pixels (after EXIF orientation for JPEG)"
    )
    image_height: int | None = column(
        pa.int32(), "original image height in pixels (after EXIF orientation for JPEG)"
    )
    roi_box: list[float] | None = column(
        pa.list_(_F32),
        "the manifest's region of interest `[x0, y0, x1, y1]` in original-image pixels, or null",
    )
    model_id: str | None = column(_STRING, "the model that answered, as given (hub id or local folder)")
    model_revision: str | None = column(
        _STRING, "the model's hub commit, or `sha256:<16 hex>` of a local folder's config and weights"
    )
    method: str | None = column(_STRING, "relevance method (`chefer`, `rollout`, `raw_attention`, ...)")
    generate_seconds: float | None = column(
        _F32, "time spent generating the answer (a batch's time divided evenly over its items)"
    )
    explain_seconds: float | None = column(
        _F32, "time spent computing all relevance maps of the item (a batch's, divided evenly)"
    )
    metadata: dict[str, str] | None = column(
        pa.map_(_STRING, _STRING),
        'the manifest\'s pass-through columns (cohort metadata), as strings; a missing value is `""`',
    )


@dataclass(frozen=True)
class TokenRecord(Record):
    """One explained target (an answer token, word or the whole answer) on one image of the prompt."""

    item_id: str = column(_STRING, "joins to answers", required=True)
    image_index: int | None = column(pa.int16(), "which image of the prompt (0 for single-image prompts)")
    image_group: int | None = column(
        pa.int16(),
        "which URI of the item's `image_uris` the image came from (a volume's slices share one)",
    )
    image_label: str | None = column(
        _STRING, "the text written before the image in the prompt (`prior`, `slice 12 of 85`), or null"
    )
    slice_index: int | None = column(
        pa.int32(), "a volume's slice: its 0-based position in the ordered volume; null for other images"
    )
    n_slices: int | None = column(pa.int32(), "a volume's slice count; null for other images")
    study_share: float | None = column(
        _F32,
        "this image's share of the target's positive image relevance over all images of the prompt "
        "(1 for single-image prompts)",
    )
    outside_body_share: float | None = column(
        _F32,
        "volume slices: share of the map's positive mass on cells outside the body (pixels darker than 10% "
        "of full scale after windowing); null for other images",
    )
    outside_body_cells: float | None = column(
        _F32,
        "volume slices: the share of the slice's cells outside the body, what a uniform map puts there "
        "(the reference for `outside_body_share`); null for other images",
    )
    target_kind: str | None = column(_STRING, "`token`, `word` or `answer`", allowed=TARGET_KINDS)
    target_text: str | None = column(_STRING, "the token's text, the word, or the whole answer")
    word: str | None = column(
        _STRING, "the answer word the token belongs to (tokens and words); null for `answer`"
    )
    token_id: int | None = column(pa.int64(), "vocabulary id of the token (`token` rows only)")
    token_position: int | None = column(
        pa.int32(), "position of the token in the full sequence (`token` rows only)"
    )
    method: str | None = column(_STRING, "relevance method")
    grid_h: int | None = column(pa.int16(), "rows of the image's token grid (16 for MedGemma)")
    grid_w: int | None = column(pa.int16(), "columns of the image's token grid (16 for MedGemma)")
    image_relevance: Any = column(
        pa.list_(_F32),
        "raw relevance of the image tokens, row-major, length `grid_h * grid_w`; no normalisation",
    )
    text_relevance: Any = column(
        pa.list_(_F32), "raw relevance of the prompt tokens, aligned with `answers.prompt_tokens`"
    )
    image_mass: float | None = column(_F32, "sum of the positive part of `image_relevance`")
    text_mass: float | None = column(_F32, "sum of the positive part of `text_relevance`")
    image_share: float | None = column(_F32, "`image_mass / (image_mass + text_mass)`")
    region_shares: dict[str, float] | None = column(
        REGION_SHARES_TYPE,
        "share of the positive image mass in each region (below); each family sums to 1",
    )
    entropy: float | None = column(
        _F32,
        "entropy of the positive map as a distribution over cells, divided by log(cells): 1 = uniform, "
        "0 = one cell",
    )
    top10_mass: float | None = column(_F32, "share of the positive mass in the top 10 % of cells")
    peak_row: int | None = column(pa.int16(), "grid row of the largest relevance")
    peak_col: int | None = column(pa.int16(), "grid column of the largest relevance")
    roi_share: float | None = column(
        _F32, "share of the positive mass inside the item's ROI (box or mask); null without ROI"
    )
    roi_hit: bool | None = column(
        pa.bool_(), "pointing game: does the peak cell overlap the ROI; null without ROI"
    )
    explain_seconds: float | None = column(
        _F32,
        "the item's explanation time divided evenly over its targets (they share one forward pass and "
        "batched gradients, so no target has a time of its own)",
    )


@dataclass(frozen=True)
class MentionRecord(Record):
    """One finding an answer mentions (`auditing.mentions.read_mentions`): how it is asserted, where, and
    the answer tokens that name it."""

    item_id: str = column(_STRING, "joins to answers", required=True)
    mention: int | None = column(pa.int16(), "the mention's order in the answer, from 0")
    finding: str | None = column(
        _STRING, "canonical finding name (`auditing/mentions/rules/findings.json`: synonyms map to it)"
    )
    assertion: str | None = column(_STRING, "`present`, `absent` or `uncertain`", allowed=ASSERTIONS)
    side: str | None = column(
        _STRING, "the patient side the mention names: `right`, `left`, `bilateral`, or null", allowed=SIDES
    )
    zone: str | None = column(
        _STRING, "the zone or lobe it names (`upper zone`, `lower lobe`, `lingula`, ...), or null"
    )
    sentence: str | None = column(_STRING, "the sentence of the answer it is in")
    start: int | None = column(
        pa.int32(), "first character of the mention's phrase in `answers.answer` (0-based)"
    )
    end: int | None = column(pa.int32(), "one past its last character")
    finding_positions: list[int] | None = column(
        pa.list_(pa.int32()),
        "sequence positions (as `tokens.token_position`) of the answer tokens whose characters overlap the "
        "finding words; empty when the finding comes from the question",
    )
    side_positions: list[int] | None = column(
        pa.list_(pa.int32()),
        "sequence positions of the answer tokens that overlap the side word; empty where the answer names none",
    )
    from_question: bool | None = column(
        pa.bool_(),
        'true when the answer names no finding ("yes", "left lower zone") and it was taken from the question',
    )


@dataclass(frozen=True)
class ErrorRecord(Record):
    """Why one row or item produced no answer: one failed manifest row or item, at one pipeline stage."""

    item_id: str | None = column(_STRING, "the item id when known (null for rows too broken to name)")
    row_number: int | None = column(pa.int64(), "manifest row (1-based)")
    image_uri: str | None = column(_STRING, "resolved image URI when known")
    stage: str = column(
        _STRING,
        "`manifest`, `image`, `generate`, `explain`, `mentions` (reading the answer's findings) or `write`",
        allowed=STAGES,
        default="manifest",
    )
    error_type: str = column(
        _STRING, "exception class name or a manifest code (a short CamelCase name)", default=""
    )
    message: str = column(
        _STRING, "what happened, with which value, and what is allowed; never a secret", default=""
    )
    occurred_at: datetime = column(
        pa.timestamp("us", tz="UTC"),
        "when the error was recorded",
        default_factory=lambda: datetime.now(UTC),
    )

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage {self.stage!r} is not one of {', '.join(STAGES)}")

    @classmethod
    def from_exception(
        cls,
        exc: BaseException,
        *,
        stage: str,
        item: Any = None,
        item_id: str | None = None,
        row_number: int | None = None,
        image_uri: str | None = None,
    ) -> ErrorRecord:
        """Record ``exc`` for ``item`` (anything with item_id, row_number, image_uri) or explicit ids.

        >>> ErrorRecord.from_exception(CorruptImage("a.png: truncated", name="a.png"), stage="image", item=item)
        """
        if item is not None:
            item_id = item_id or item.item_id
            row_number = row_number if row_number is not None else item.row_number
            image_uri = image_uri or item.image_uri
        return cls(item_id, row_number, image_uri, stage, type(exc).__name__, str(exc))


@dataclass(frozen=True)
class FaithfulnessRecord(Record):
    """One method's map of one target on one image of a sampled item, and its checks."""

    item_id: str = column(_STRING, "joins to answers", required=True)
    image_index: int | None = column(pa.int16(), "which image of the prompt")
    target_kind: str | None = column(_STRING, "`token`, `word` or `answer`", allowed=TARGET_KINDS)
    target_text: str | None = column(_STRING, "the token's text, the word, or the whole answer")
    word: str | None = column(_STRING, "the answer word (tokens and words); null for `answer`")
    method: str | None = column(
        _STRING,
        "`chefer`, `rollout`, `raw_attention`, `occlusion`, `pixel_occlusion`, and `image_occlusion` on items "
        "of several images (the two cell-level references only on prompts of at most "
        "`faithfulness_max_image_tokens` image tokens)",
    )
    grid_h: int | None = column(pa.int16(), "rows of the image's token grid")
    grid_w: int | None = column(pa.int16(), "columns of the image's token grid")
    image_relevance: Any = column(pa.list_(_F32), "the method's map, row-major (as in `tokens`)")
    region_shares: dict[str, float] | None = column(REGION_SHARES_TYPE, "as in `tokens`")
    spearman_vs_occlusion: float | None = column(
        _F32,
        "rank correlation with token occlusion's map, computed by the engine; null where not computed (the "
        "audit's agreement with each reference's evidence set is computed from the maps: `cohort_trust`)",
    )
    top_cell_agrees: bool | None = column(
        pa.bool_(), "the peak cell is token occlusion's peak cell; null where not computed"
    )
    morf_auc: float | None = column(
        _F32, "area under the most-relevant-first removal curve; null for the references"
    )
    lerf_auc: float | None = column(
        _F32, "area under the least-relevant-first removal curve; null for the references"
    )
    auc_gap: float | None = column(
        _F32, "`lerf_auc − morf_auc`: larger is more faithful; null for the references"
    )
    randomization_spearman: float | None = column(
        _F32,
        "rank correlation with the map after the model's weights were scrambled (Adebayo et al.); high means "
        "the map barely depends on the model; null for the references",
    )
    seconds: float | None = column(_F32, "time of that method per target")


@dataclass(frozen=True)
class FlagRecord(Record):
    """One raised flag: the rule that raised it, where, the evidence and the threshold."""

    scope: str = column(
        _STRING,
        "`item` (a reviewer's worklist entry), `cohort` (a manifest column's cohort) or `cluster` (a cluster "
        "of maps)",
        allowed=FLAG_SCOPES,
        default=COHORT_SCOPE,
    )
    rule: str = column(_STRING, "the rule (`auditing.rules.RULES` lists them with their titles)", default="")
    method: str = column(
        _STRING,
        "the method whose maps raised it; `<method> (faithfulness sample)` for the sample's maps",
        default="",
    )
    grouping: str | None = column(
        _STRING, "the grouping (a manifest column, `strategy` for clusters); null for item flags"
    )
    cohort: str | None = column(_STRING, "the cohort, or the cluster's id as text; null for item flags")
    target_class: str | None = column(_STRING, "`answer` or a finding word")
    item_id: str | None = column(_STRING, "item flags only")
    metric: str | None = column(_STRING, "the measured quantity")
    value: float | None = column(_F64, "its value")
    baseline: float | None = column(
        _F64, "the mean of the rest of the run it was compared with (share and cluster rules)"
    )
    threshold: float | None = column(
        _F64, "the rule's threshold (a ratio to the baseline, a rate, or a share)"
    )
    ci_low: float | None = column(_F64, "low end of the CI of the cohort − rest difference, or of the rate")
    ci_high: float | None = column(_F64, "high end of that CI")
    n_items: int | None = column(pa.int32(), "items behind the flag")
    message: str | None = column(_STRING, "the finding in words, with the numbers")


@dataclass(frozen=True)
class ClusterRecord(Record):
    """One audited item's strategy cluster: the cluster of whole-answer maps of its answer class it fell in."""

    item_id: str = column(_STRING, "joins to answers", required=True)
    target_class: str | None = column(_STRING, "`answer`: the whole-answer map was clustered")
    answer_class: str | None = column(
        _STRING,
        "the answer, lower-cased without final punctuation (`yes`, `no`); `answer` where a run has too many "
        "distinct answers to cluster them apart",
    )
    cluster: int | None = column(
        pa.int32(), "the cluster, unique within the run (0 the largest of the first answer class)"
    )
    embedding_x: float | None = column(
        _F64, "first spectral embedding coordinate of the map (for a scatter plot); null for a small class"
    )
    embedding_y: float | None = column(_F64, "second spectral embedding coordinate")


@dataclass(frozen=True)
class RunRecord(Record):
    """run.json: one run's settings, where its inputs came from, its counts and timings."""

    run_id: str = column(None, "the run id (also the partition folder)", required=True)
    status: str = column(
        None,
        "`running`, `completed`, or `failed` (some shards did not commit; rerun to finish)",
        required=True,
        allowed=RUN_STATUSES,
    )
    attempt: int = column(
        None, "1 for the first attempt, +1 for every rerun of the same run id", required=True
    )
    config: dict[str, Any] = column(
        None, "the run's settings: every field of `tasks.config.AuditConfig`", default_factory=dict
    )
    identity: dict[str, Any] = column(
        None,
        "the subset of `config` that decides results (and the run id); a rerun must match it",
        default_factory=dict,
    )
    manifest_uri: str | None = column(None, "the manifest's canonical URI")
    manifest_fingerprint: str | None = column(
        None, "`storage.manifest_fingerprint(manifest)`: sha256 of the valid items' content"
    )
    manifest_columns: list[str] = column(None, "the manifest's columns", default_factory=list)
    model_id: str | None = column(None, "the model as given (hub id or local folder)")
    model_revision: str | None = column(
        None,
        "the hub commit hash, or `sha256:<16 hex>` of a local folder's config and weights; null while running",
    )
    code_version: str | None = column(None, "as in the Parquet metadata")
    schema_version: str | None = column(None, "as in the Parquet metadata")
    counts: dict[str, int] = column(None, "item, row, error and shard counts", default_factory=dict)
    timings: dict[str, float] = column(None, "seconds of this attempt", default_factory=dict)
    started_at: str | None = column(None, "ISO 8601 UTC timestamp of this attempt's start")
    finished_at: str | None = column(None, "ISO 8601 UTC timestamp of its end (null while running)")
    dask: dict[str, Any] | None = column(
        None, "the Dask settings, null when shards ran in the flow's process"
    )
    flow_run_id: str | None = column(None, "the Prefect flow run of this attempt")
    groupings_from: str | None = column(None, "where the cohorts came from")
    selection: dict[str, Any] | None = column(None, "a first look only (`limit` or `sample` set)")
    workers: list[dict[str, Any]] | None = column(None, "final record: per worker process, what it ran")
    errors_of_failed_shards: list[str] | None = column(None, "final record: the first 20 shard failures")

    def __post_init__(self) -> None:
        if self.status not in RUN_STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {RUN_STATUSES}")
