"""What one audit run computes: a frozen, validated configuration and the run id derived from it.

The configuration never holds credentials: S3 access comes from the standard AWS chain at run time,
so `AuditConfig` can be logged and stored in run.json as is (the endpoint URL is not a secret).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

from auditing import DEFAULT_FINDINGS, AggregateConfig
from auditing.gate import FailOn
from storage import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SERIES_FILES,
    DEFAULT_SLICES_PER_VOLUME,
    InputScope,
    Manifest,
    input_prefix,
    manifest_fingerprint,
)
from storage.uri import parse_uri
from vocabulary.defaults import DEFAULT_MAX_NEW_TOKENS
from vocabulary.names import ATTENTION_PATHS, METHOD_NAMES

TargetsPolicy = Literal["answer", "findings", "all"]
OverlaysPolicy = Literal["none", "answer", "findings", "all"]
Method = Literal[METHOD_NAMES]
AttentionPath = Literal[ATTENTION_PATHS]
DType = Literal["float32", "bfloat16", "float16"]
DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


def _words(value: Any) -> list[str]:
    """A comma-separated string or a list, stripped, empty entries dropped."""
    if isinstance(value, str):
        value = value.split(",")
    return [str(word).strip() for word in value or () if str(word).strip()]


# comma-separated strings are accepted wherever a list is (CLI options, deployment parameters)
Groupings = Annotated[tuple[str, ...], BeforeValidator(_words)]
Findings = Annotated[
    tuple[str, ...], BeforeValidator(lambda value: list(dict.fromkeys(w.lower() for w in _words(value))))
]
InputPrefixes = Annotated[
    tuple[str, ...], BeforeValidator(lambda value: list(dict.fromkeys(map(input_prefix, _words(value)))))
]

# marks a field that changes what a run computes (what a run may read decides which items fail): a
# rerun of a run id must agree on all of them, and they make the run id (`IDENTITY_FIELDS`, below)
IDENTITY = {"identity": True}
DEFAULT_MAX_QUESTION_TOKENS = 1024
DEFAULT_FAITHFULNESS_MAX_IMAGE_TOKENS = 512  # two MedGemma images (a radiograph and its prior)


def default_model() -> str:
    """The bundled phantom model (a local folder): the demo's and the CLI's default."""
    from phantom import MODEL_PATH

    return str(MODEL_PATH)


class AggregationSettings(BaseModel):
    """The settings of what runs after the shards (`AuditConfig.aggregation`): the cohorts, the report
    and the gate. None of them changes a row the audit writes, so none is part of the run's identity."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    group_by: Groupings = Field(
        (), description="manifest metadata columns that form cohorts, comma-separated ('site+scanner': both)"
    )
    report: bool = Field(True, description="build the HTML report after aggregating")
    fail_on_flags: FailOn = Field(
        "never",
        description="fail the run (CLI exit code 3, a Failed 'Flagged' flow run) on model-level flags "
        "(cohort, cluster, trust): 'model'; on any item flag too: 'items'; 'never': a report only",
    )
    max_item_flag_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description="fail the run when more than this share of the audited items has an item flag (and on "
        "model-level flags); item flags are a worklist, so an archive's gate wants a rate, not 'items'",
    )

    def aggregate_config(self, findings: Sequence[str] | None) -> AggregateConfig:
        """`auditing.AggregateConfig` of these cohorts and a findings vocabulary."""
        return AggregateConfig(group_by=self.group_by, findings=findings)


class AuditConfig(BaseModel):
    """Settings of one audit run (frozen; every field but `manifest` and `out` has a default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    manifest: str = Field(
        description="manifest URI: local path, file:// or s3://bucket/key (.csv, .jsonl, .parquet)"
    )
    out: str = Field(description="output root: local folder or s3://bucket/prefix")
    model: str = Field(
        default_factory=default_model,
        description="hub id or local folder of a Gemma3 VLM (default: the bundled phantom model)",
        json_schema_extra=IDENTITY,
    )
    model_revision: str | None = Field(
        None, description="hub revision (commit, tag or branch) to pin", json_schema_extra=IDENTITY
    )
    method: Method = Field("chefer", description="relevance method", json_schema_extra=IDENTITY)
    attention: AttentionPath = Field(
        "auto",
        description="'eager' keeps every layer's attention maps (fast, memory grows with length²), "
        "'blockwise' keeps none (memory linear in length: long multi-image prompts), 'auto' picks by a "
        "memory estimate",
    )
    targets: TargetsPolicy = Field(
        "findings", description="which answer targets get relevance rows", json_schema_extra=IDENTITY
    )
    findings: Findings = Field(
        DEFAULT_FINDINGS,
        description="answer words explained by 'findings' (comma-separated on the CLI)",
        json_schema_extra=IDENTITY,
    )
    overlays: OverlaysPolicy = Field(
        "answer", description="which explained targets get a PNG overlay", json_schema_extra=IDENTITY
    )
    shard_size: int = Field(
        16,
        ge=1,
        le=100_000,
        description="items per shard (one task, one part file)",
        json_schema_extra=IDENTITY,
    )
    batch_size: int = Field(
        8,  # the fastest of 1, 2, 4, 8 on CPU (docs/performance.md); the GPU bench's batch rows decide there
        ge=1,
        le=256,
        description="items of a shard generated and explained together (outputs do not depend on it: "
        "answers equal, maps to float rounding); batches are cut by length and the memory budget",
    )
    max_new_tokens: int = Field(
        DEFAULT_MAX_NEW_TOKENS, ge=1, le=4096, description="answer length limit", json_schema_extra=IDENTITY
    )
    max_question_tokens: int = Field(
        DEFAULT_MAX_QUESTION_TOKENS,
        ge=1,
        le=100_000,
        description="longer questions become error rows before the model runs",
        json_schema_extra=IDENTITY,
    )
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', 'mps', ...")
    dtype: DType | None = Field(
        None, description="model dtype (unset: the checkpoint's)", json_schema_extra=IDENTITY
    )
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (unset: the AWS configuration)"
    )
    region: str | None = Field(None, description="S3 region (unset: the AWS configuration)")
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=1,
        description="images announcing more pixels are rejected",
        json_schema_extra=IDENTITY,
    )
    max_image_bytes: int = Field(
        DEFAULT_MAX_IMAGE_BYTES,
        ge=1,
        description="larger image or mask files are rejected before they are read (bytes)",
        json_schema_extra=IDENTITY,
    )
    slices_per_volume: int = Field(
        DEFAULT_SLICES_PER_VOLUME,
        ge=1,
        le=1024,
        description="slices sampled uniformly along each CT/MRI volume (DICOM series or NIfTI) of an item, "
        "as MedGemma 1.5's CT recipe does",
        json_schema_extra=IDENTITY,
    )
    max_series_files: int = Field(
        DEFAULT_MAX_SERIES_FILES,
        ge=1,
        description="a DICOM series with more files is refused before its pixels are read",
        json_schema_extra=IDENTITY,
    )
    allow_download: bool = Field(
        False,
        description="download a hub model at run time when it is not in the Hugging Face cache (off: a "
        "missing model is one clear error before the audit)",
    )
    allowed_inputs: InputPrefixes = Field(
        (),
        description="URI prefixes (s3://bucket/prefix, /folder, file:///folder) where manifest images and "
        "masks may also be read, comma-separated; unset: only the manifest's own bucket, or its folder "
        "and below",
        json_schema_extra=IDENTITY,
    )
    limit: int | None = Field(
        None,
        ge=1,
        description="audit only the manifest's first N items: a first look (a run id of its own)",
        json_schema_extra=IDENTITY,
    )
    sample: int | None = Field(
        None,
        ge=1,
        description="audit N items drawn at random, the same N for the same manifest content: a first look "
        "across the whole manifest (a run id of its own)",
        json_schema_extra=IDENTITY,
    )
    system_prompt: str | None = Field(
        None, description="optional system turn before every question", json_schema_extra=IDENTITY
    )
    faithfulness_sample: int = Field(
        0,
        ge=0,
        description="items checked against occlusion, removal curves and randomisation (0: off)",
        json_schema_extra=IDENTITY,
    )
    faithfulness_max_image_tokens: int = Field(
        DEFAULT_FAITHFULNESS_MAX_IMAGE_TOKENS,
        ge=1,
        description="the faithfulness sample checks maps cell by cell against token and pixel occlusion "
        "(one forward per image token) on prompts of at most this many image tokens; prompts of several "
        "images are also checked image by image against image occlusion (one forward per image), longer "
        "ones (CT and MRI studies) only so",
        json_schema_extra=IDENTITY,
    )
    aggregate: bool = Field(True, description="compute cohort statistics and flags after the audit")
    aggregation: AggregationSettings = Field(
        default_factory=AggregationSettings,
        description="what the aggregation after the audit groups by, whether it builds the report, and the "
        "gate on its flags",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE.fullmatch(value):
            raise ValueError(
                f"device {value!r} is not one of auto, cpu, cuda, cuda:N, mps, xpu, xpu:N "
                "('auto' takes cuda where a GPU is visible)"
            )
        return value

    @field_validator("manifest", "out")
    @classmethod
    def _valid_uri(cls, value: str) -> str:
        parse_uri(value)  # InvalidURIError (a ValueError) names what is allowed
        return value

    @model_validator(mode="after")
    def _findings_needed(self) -> AuditConfig:
        if "findings" in (self.targets, self.overlays) and not self.findings:
            raise ValueError("targets or overlays 'findings' needs a non-empty findings vocabulary")
        if self.limit is not None and self.sample is not None:
            raise ValueError("limit and sample both choose the items to audit: give one of them")
        return self

    def identity(self) -> dict[str, Any]:
        """The settings that decide a run's results (not where it runs, nor where the manifest lives)."""
        identity = self.model_dump(include=set(IDENTITY_FIELDS), mode="json")
        identity["findings"] = sorted(self.findings)
        identity["allowed_inputs"] = sorted(self.allowed_inputs)
        return identity

    def aggregate_config(self) -> AggregateConfig:
        """What the run's aggregation groups by and which answer words are findings."""
        return self.aggregation.aggregate_config(self.findings)

    def input_scope(self) -> InputScope:
        """Where this run reads the manifest's images and masks from, and how large they may be."""
        return InputScope(self.manifest, self.allowed_inputs, self.max_image_bytes)

    def explainer_targets(self) -> str | list[str]:
        """The `targets` argument of `Explainer.explain` for this policy."""
        return list(self.findings) if self.targets == "findings" else self.targets


def aggregate_config(group_by: Any = (), findings: Any = DEFAULT_FINDINGS) -> AggregateConfig:
    """`auditing.AggregateConfig` of a grouping and a findings vocabulary, parsed as `AuditConfig` parses
    them (comma-separated strings too), for `vlm-audit aggregate`.

    >>> aggregate_config("site,site+scanner").group_by
    ('site', 'site+scanner')
    """
    findings = TypeAdapter(Findings).validate_python(findings)
    return AggregationSettings(group_by=group_by).aggregate_config(findings)


IDENTITY_FIELDS = tuple(
    name for name, field in AuditConfig.model_fields.items() if field.json_schema_extra == IDENTITY
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def derive_run_id(manifest: Manifest, config: AuditConfig) -> str:
    """`<manifest name>-<12 hex>`: the hash of the manifest's content and the run's identity settings.

    The same manifest content with the same settings always gets the same id, so rerunning resumes.
    >>> derive_run_id(read_manifest("s3://scans/batch-07.csv"), config)  # doctest: +SKIP
    'batch-07-3fa2c1d04e5b'
    """
    payload = json.dumps(
        {"manifest": manifest_fingerprint(manifest), **config.identity()},
        sort_keys=True,
        separators=(",", ":"),
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    name = parse_uri(manifest.uri).path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    stem = _UNSAFE.sub("_", name).strip("._-")[:48] or "manifest"
    return f"{stem}-{digest}"


class DaskSettings(BaseModel):
    """A Dask cluster for the shards: an existing scheduler (`address`) or a local one (`n_workers`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str | None = Field(None, description="scheduler address, e.g. tcp://scheduler:8786")
    n_workers: int | None = Field(None, ge=1, le=1024, description="local cluster: worker processes")
    threads_per_worker: int = Field(1, ge=1, le=64, description="local cluster: threads per worker")
    cluster_class: str = Field(
        "distributed.LocalCluster", description="local cluster class, e.g. dask_cuda.LocalCUDACluster"
    )
    resources: dict[str, float] | None = Field(
        None, description="per-task resources, e.g. {'GPU': 1}; a local cluster's workers get the same amount"
    )

    @model_validator(mode="after")
    def _one_cluster(self) -> DaskSettings:
        if (self.address is None) == (self.n_workers is None):
            raise ValueError(
                "give either address (an existing Dask scheduler) or n_workers (a local cluster), not "
                f"{'both' if self.address else 'neither'}"
            )
        return self

    def describe(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
