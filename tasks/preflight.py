"""Checks before any shard runs: the mistakes that would otherwise surface after the whole audit.

Each raises a `PreflightError` (a `ValueError`: the CLI prints its one line and exits 2) saying what is
wrong and what to do; `preview_run` runs them and says what the audit would do (`--dry-run`). Nothing
here loads torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from storage import (
    InputNotAllowed,
    Manifest,
    ObjectNotFound,
    completed_shards,
    manifest_fingerprint,
    read_manifest,
    read_run,
    shard,
)
from storage.manifests import RESERVED_COLUMNS
from tasks.config import AuditConfig, derive_run_id
from tasks.shards import select_items

AUTO_GROUP_MAX_VALUES = 12  # a metadata column with 2 to this many values is a natural cohort column
AUTO_GROUP_MIN_ITEMS = 5  # ... when at least two of its values have this many items


class PreflightError(ValueError):
    """A setting or input that would make the audit fail or mislead, found before it runs."""


def metadata_columns(manifest: Manifest) -> list[str]:
    return [column for column in manifest.columns if column not in RESERVED_COLUMNS]


def check_groupings(manifest: Manifest, group_by: Sequence[str]) -> None:
    """Every column of every grouping ("site", "site+scanner") is a metadata column of the manifest."""
    available = metadata_columns(manifest)
    missing = sorted({c for grouping in group_by for c in grouping.split("+") if c not in available})
    if missing:
        raise PreflightError(
            f"cannot group by {', '.join(missing)}: not a column of {manifest.uri}; its metadata columns "
            f"are {', '.join(available) or 'none'}"
        )


def automatic_groupings(manifest: Manifest) -> tuple[str, ...]:
    """The metadata columns that make cohorts on their own: 2 to `AUTO_GROUP_MAX_VALUES` distinct
    values, at least two of them with `AUTO_GROUP_MIN_ITEMS` items (identifiers and free text have too
    many values; a constant column has one)."""
    chosen = []
    for column in metadata_columns(manifest):
        counts: dict[str, int] = {}
        for item in manifest.items:
            value = item.metadata.get(column, "")
            if value:
                counts[value] = counts.get(value, 0) + 1
        if (
            2 <= len(counts) <= AUTO_GROUP_MAX_VALUES
            and sum(n >= AUTO_GROUP_MIN_ITEMS for n in counts.values()) >= 2
        ):
            chosen.append(column)
    return tuple(chosen)


def check_model_available(model: str, revision: str | None, allow_download: bool) -> None:
    """A local folder must hold a model (config.json); a hub id must be in the Hugging Face cache
    unless downloading at run time is allowed, so that a missing model is one clear error before the
    audit instead of a failure in every shard."""
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")) or os.sep + os.sep in model:
        if not (path / "config.json").is_file():
            raise PreflightError(
                f"model folder {model} has no config.json: pass a folder with the model's config, weights and "
                "processor files (save_pretrained), or a Hugging Face hub id"
            )
        return
    if allow_download:
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(model, "config.json", revision=revision), str):
        home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise PreflightError(
            f"model {model!r} is not in the Hugging Face cache ({home}) and nothing is downloaded at run time: "
            f"fetch it first (huggingface-cli download {model}), point HF_HOME at the cache that has it, or "
            "allow the download (allow_download, --allow-download)"
        )


@dataclass(frozen=True)
class OutsideInputs:
    """Audited items that name an image or mask outside the manifest's store and `allowed_inputs`: each
    becomes an `InputNotAllowed` error row, so a run of nothing but these answers nothing."""

    items: int
    first_message: str | None = None

    def describe(self, of_items: int) -> str:
        return (
            f"{self.items} of {of_items} items name inputs outside the manifest's store and allowed_inputs "
            f"(InputNotAllowed error rows); the first: {self.first_message}"
        )


def outside_inputs(config: AuditConfig, manifest: Manifest) -> OutsideInputs:
    """The audited items whose images or masks the run's input scope does not cover (paths only: no
    object is read; local links are followed as the read would follow them)."""
    scope, items, first = config.input_scope(), 0, None
    for item in manifest.items:
        for uri in (*item.image_uris, *([item.roi_mask_uri] if item.roi_mask_uri else [])):
            try:
                scope.check(uri)
            except InputNotAllowed as exc:
                items, first = items + 1, first or str(exc)
                break
    return OutsideInputs(items, first)


@dataclass(frozen=True)
class CheckedRun:
    """A run's inputs once the pre-flight checks passed."""

    config: AuditConfig  # with the automatic grouping when none was given
    groupings_from: str  # "settings", "manifest columns with few values" or "none found"
    fingerprint: str  # the whole manifest's (`storage.manifest_fingerprint`)
    run_id: str
    audited: Manifest  # the items the run audits: the manifest, or its limit/sample selection
    outside: OutsideInputs  # audited items naming inputs outside the allowed prefixes


def check_run(config: AuditConfig, manifest: Manifest, run_id: str | None = None) -> CheckedRun:
    """The pre-flight checks on a read manifest (cohort columns, model), then the run's grouping (the
    manifest's natural columns when none is given), fingerprint, run id and audited items."""
    check_groupings(manifest, config.aggregation.group_by)
    check_model_available(config.model, config.model_revision, config.allow_download)
    groupings_from = "settings"
    if not config.aggregation.group_by and config.aggregate:  # cohorts by default: the natural columns
        aggregation = config.aggregation.model_copy(update={"group_by": automatic_groupings(manifest)})
        config = config.model_copy(update={"aggregation": aggregation})
        groupings_from = "manifest columns with few values" if aggregation.group_by else "none found"
    fingerprint = manifest_fingerprint(manifest)
    audited = select_items(manifest, config.limit, config.sample, seed=fingerprint)
    return CheckedRun(
        config=config,
        groupings_from=groupings_from,
        fingerprint=fingerprint,
        run_id=run_id or derive_run_id(manifest, config),
        audited=audited,
        outside=outside_inputs(config, audited),
    )


@dataclass(frozen=True)
class RunPreview:
    """What `audit(config)` would do, found without writing anything (`vlm-audit run --dry-run`)."""

    run_id: str
    manifest_uri: str
    manifest_items: int
    items: int  # the items the run audits: all, or a first look's limit/sample
    manifest_errors: tuple[str, ...]  # one line per rejected row
    shards: int
    shards_done: frozenset[int]  # already committed: a rerun skips them
    previous_status: str | None  # run.json's status when the run id exists
    group_by: tuple[str, ...]
    groupings_from: str
    faithfulness_items: int
    shard_size: int
    outside: OutsideInputs

    def describe(self, limit: int = 5) -> str:
        """The plan in a few lines for the terminal."""
        pending = self.shards - len(self.shards_done)
        selected = (
            f"{self.items} of its {self.manifest_items} items" if self.items != self.manifest_items else None
        )
        lines = [
            f"dry run: nothing was written or run. Run {self.run_id}"
            + (
                f" exists ({self.previous_status}, {len(self.shards_done)} shards committed)"
                if self.previous_status
                else " is new"
            ),
            f"  manifest   {self.manifest_uri}: {selected or f'{self.items} items'}, "
            f"{len(self.manifest_errors)} rejected rows (error rows)",
            *(f"    {line}" for line in self.manifest_errors[:limit]),
            *(
                [f"    ... {len(self.manifest_errors) - limit} more"]
                if len(self.manifest_errors) > limit
                else []
            ),
            *([f"  inputs     {self.outside.describe(self.items)}"] if self.outside.items else []),
            f"  shards     {self.shards} (up to {self.shard_size} items each): {pending} to run, "
            f"{len(self.shards_done)} already done (skipped)",
            f"  cohorts    {', '.join(self.group_by) or 'none: whole-run statistics only'} ({self.groupings_from})",
            f"  trust      {self.faithfulness_items} items checked against the perturbation references"
            if self.faithfulness_items
            else "  trust      no faithfulness sample (faithfulness_sample 0)",
        ]
        return "\n".join(lines)


def preview_run(config: AuditConfig, run_id: str | None = None) -> RunPreview:
    """Read the manifest and the output root, run the pre-flight checks, and say what the audit would do.

    Raises what the audit would raise before its first shard (`PreflightError`, `ManifestError`, a
    `StorageError`); reads, never writes.
    """
    from tasks import cache

    manifest = read_manifest(config.manifest, cache=cache.reader(config.endpoint_url, config.region))
    checked = check_run(config, manifest, run_id)
    store = cache.output_store(config.out, config.endpoint_url, config.region)
    try:
        previous: str | None = read_run(store, checked.run_id).get("status", "unknown")
    except ObjectNotFound:
        previous = None
    n_shards = len(shard(checked.audited.items, config.shard_size))
    return RunPreview(
        run_id=checked.run_id,
        manifest_uri=manifest.uri,
        manifest_items=len(manifest.items),
        items=len(checked.audited.items),
        manifest_errors=tuple(f"row {e.row_number}: {e.message}" for e in manifest.errors),
        shards=n_shards,
        shards_done=frozenset(i for i in completed_shards(store, checked.run_id) if i < n_shards),
        previous_status=previous,
        group_by=tuple(checked.config.aggregation.group_by),
        groupings_from=checked.groupings_from,
        faithfulness_items=min(config.faithfulness_sample, len(checked.audited.items)),
        shard_size=config.shard_size,
        outside=checked.outside,
    )
