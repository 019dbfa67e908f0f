"""What travels between the flow and the workers: a `ShardJob` out, a `ShardSummary` (or a
`ShardFailure` the flow records for a shard that raised) back. All small, so they cross any process."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from storage import Manifest
from tasks.config import AuditConfig


def sampled_item_ids(item_ids: Iterable[str], size: int, *, seed: str = "") -> set[str]:
    """A deterministic sample of `size` items: the lowest sha256(seed + item id) ranks.

    It depends on the items and the seed alone, so a resumed run checks the same items.
    """
    if size <= 0:
        return set()
    ranked = sorted(item_ids, key=lambda item_id: hashlib.sha256(f"{seed}\n{item_id}".encode()).hexdigest())
    return set(ranked[:size])


def select_items(manifest: Manifest, limit: int | None, sample: int | None, *, seed: str) -> Manifest:
    """The items a run audits: all, the first `limit`, or a `sample` (`sampled_item_ids` with `seed`,
    the manifest's fingerprint), in manifest order; rejected rows are kept as they are."""
    if limit is not None:
        return dataclasses.replace(manifest, items=manifest.items[:limit])
    if sample is not None:
        chosen = sampled_item_ids((item.item_id for item in manifest.items), sample, seed=seed)
        return dataclasses.replace(manifest, items=tuple(i for i in manifest.items if i.item_id in chosen))
    return manifest


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs for one shard."""

    run_id: str
    shard_index: int
    fingerprint: str
    config: AuditConfig
    checked_items: frozenset[str] = frozenset()  # the faithfulness sample's items in this run


@dataclass(frozen=True)
class WorkerInfo:
    """The process that ran a shard, and how many models it had loaded by then."""

    host: str
    pid: int
    model_loads: int

    @property
    def name(self) -> str:
        return f"{self.host}:{self.pid}"


@dataclass(frozen=True)
class ShardSummary:
    """A committed shard: counts, the model it used, timings (seconds; wall-clock start and end)."""

    shard: int
    items: int
    ok: int
    failed: int
    token_rows: int
    error_rows: int
    overlays: int
    model_id: str
    model_revision: str | None
    seconds: float
    model_load_seconds: float
    generate_seconds: float
    explain_seconds: float
    faithfulness_seconds: float  # the faithfulness sample's references and checks
    write_seconds: float
    started_at: float
    finished_at: float
    worker: WorkerInfo


class ItemDeferred(RuntimeError):
    """An item failed because of the environment (an outage, credentials), not its data. The shard is
    not committed, so a rerun of the run id redoes it once the environment is fixed."""


@dataclass(frozen=True)
class ShardFailure:
    """A shard that raised instead of committing; rerunning the run id redoes it. `deferred`: it did
    not commit because an item's read failed for the environment (an outage, wrong credentials)."""

    shard: int
    error: str
    deferred: bool = False
