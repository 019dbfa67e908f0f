"""Checks before any shard runs: the mistakes that would otherwise surface after the whole audit.

Each raises a `PreflightError` (a `ValueError`: the CLI prints its one line and exits 2) saying what is
wrong and what to do. Nothing here loads torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from storage import Manifest
from storage.manifests import RESERVED_COLUMNS

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
