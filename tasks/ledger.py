"""The run ledger: planning a (re)run from what the output store holds, counting outputs, run.json.

Resume reads the store, never memory: shards whose answers part exists are done. A rerun must use
the settings the run id was started with, or shards would be cut differently and rows duplicated.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.compute as pc
import pyarrow.dataset as ds

from storage import (
    MANIFEST_PART,
    SCHEMA_VERSION,
    Manifest,
    ObjectNotFound,
    ObjectStore,
    RunRecord,
    S3Store,
    arrow_filesystem,
    code_version,
    completed_shards,
    parse_uri,
    part_name,
    read_run,
    shard,
    table_schema,
    write_part,
    write_run,
)
from tasks.config import AuditConfig
from tasks.shards import ShardFailure, ShardSummary


class RunConflict(RuntimeError):
    """The run id exists with other settings or another manifest content."""


@dataclass(frozen=True)
class RunPlan:
    run_id: str
    fingerprint: str
    n_shards: int
    done: frozenset[int]
    attempt: int

    @property
    def pending(self) -> list[int]:
        return [index for index in range(self.n_shards) if index not in self.done]


@dataclass(frozen=True)
class RunContext:
    """How an attempt runs, recorded in run.json: the Dask settings, the Prefect flow run, where the
    cohorts came from, and a first look's selection (None for the whole manifest)."""

    dask: dict[str, Any] | None
    flow_run_id: str | None
    groupings_from: str
    selection: dict[str, Any] | None = None

    def record_fields(self) -> dict[str, Any]:
        """The `storage.RunRecord` fields it fills."""
        return asdict(self)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def check_compatible(previous: dict[str, Any], config: AuditConfig, fingerprint: str, run_id: str) -> None:
    """Raise `RunConflict` naming each setting that differs from the run's first attempt."""
    before = {**previous.get("identity", {}), "manifest_fingerprint": previous.get("manifest_fingerprint")}
    now = {**config.identity(), "manifest_fingerprint": fingerprint}
    keys = [*now, *(key for key in before if key not in now)]  # a setting dropped back to its default too
    differences = [
        f"{key}={now.get(key)!r} (was {before.get(key)!r})" for key in keys if before.get(key) != now.get(key)
    ]
    if differences:
        raise RunConflict(
            f"run id {run_id!r} was started with other settings: {', '.join(differences)}; rerun with the "
            "same settings to resume it, or drop --run-id to get a new run id for these settings"
        )


def plan_run(
    store: ObjectStore,
    run_id: str,
    config: AuditConfig,
    manifest: Manifest,
    fingerprint: str,
    context: RunContext,
) -> RunPlan:
    """Check a rerun is compatible, list done shards, write the manifest errors part and a 'running' run.json.

    Listing the output store is the first request to it, so wrong credentials fail here, before
    anything is written.
    """
    done = completed_shards(store, run_id)
    try:
        previous = read_run(store, run_id)
    except ObjectNotFound:
        previous = None
    if previous is not None:
        check_compatible(previous, config, fingerprint, run_id)
    n_shards = len(shard(manifest.items, config.shard_size))
    attempt = (previous or {}).get("attempt", 0) + 1
    write_part(
        store, "errors", run_id, MANIFEST_PART, manifest.errors or table_schema("errors").empty_table()
    )
    record = run_record(
        run_id,
        config,
        manifest,
        fingerprint,
        status="running",
        attempt=attempt,
        started_at=now_iso(),
        **context.record_fields(),
    )
    write_run(store, run_id, record)
    return RunPlan(run_id, fingerprint, n_shards, frozenset(done), attempt)


def _committed_dataset(store: ObjectStore, table: str, run_id: str, done: set[int]) -> ds.Dataset | None:
    """The table's parts of committed shards (and the manifest part): a crashed shard's leftovers don't count."""
    prefix = f"{table}/run_id={run_id}/"
    wanted = {f"{part_name(index)}.parquet" for index in done} | {f"{MANIFEST_PART}.parquet"}
    keys = [key for key in store.list(prefix) if key[len(prefix) :] in wanted]
    if not keys:
        return None
    endpoint = (store.endpoint_url, store.region) if isinstance(store, S3Store) else (None, None)
    filesystem, _ = arrow_filesystem(store.root, endpoint_url=endpoint[0], region=endpoint[1])
    paths = [_arrow_path(store.uri(key)) for key in keys]
    return ds.dataset(paths, format="parquet", filesystem=filesystem)


def _arrow_path(uri: str) -> str:
    parsed = parse_uri(uri)
    return f"{parsed.bucket}/{parsed.path}" if parsed.scheme == "s3" else parsed.path


def count_outputs(store: ObjectStore, run_id: str) -> dict[str, int]:
    """Totals over every attempt, from committed parts (row counts come from Parquet footers)."""
    done = completed_shards(store, run_id)
    answers = _committed_dataset(store, "answers", run_id, done)
    tokens = _committed_dataset(store, "tokens", run_id, done)
    errors = _committed_dataset(store, "errors", run_id, done)
    status = answers.to_table(columns=["status"]).column("status") if answers is not None else None
    answered = len(status) if status is not None else 0
    ok = int(pc.sum(pc.equal(status, "ok")).as_py() or 0) if answered else 0
    return {
        "answered": answered,
        "ok": ok,
        "failed": answered - ok,
        "targets": tokens.count_rows() if tokens is not None else 0,
        "errors": errors.count_rows() if errors is not None else 0,
        "shards_done": len(done),
    }


@dataclass(frozen=True)
class ErrorDigest:
    """A run's error rows in brief: how many of each error type (and stage), and the first message."""

    by_type: tuple[tuple[str, str, int], ...]  # (error type, stage, rows), the most frequent first
    first_message: str | None

    def describe(self) -> str:
        return ", ".join(f"{rows} {error_type} ({stage})" for error_type, stage, rows in self.by_type)


def error_digest(store: ObjectStore, run_id: str) -> ErrorDigest:
    """The committed error rows of a run in brief (`ErrorDigest`); read only when nothing was answered."""
    errors = _committed_dataset(store, "errors", run_id, completed_shards(store, run_id))
    if errors is None:
        return ErrorDigest((), None)
    table = errors.to_table(columns=["error_type", "stage", "message"])
    counted = table.group_by(["error_type", "stage"]).aggregate([("message", "count")])
    by_type = sorted(
        zip(
            *(counted.column(name).to_pylist() for name in ("error_type", "stage", "message_count")),
            strict=True,
        ),
        key=lambda row: (-row[2], row[0], row[1]),
    )
    first = table.column("message")[0].as_py() if table.num_rows else None
    return ErrorDigest(tuple(by_type), first)


def nothing_answered_message(
    run_id: str, counts: dict[str, int], digest: ErrorDigest, errors_uri: str
) -> str:
    """What a run in which no item was answered says: the counts, the error types and the first error,
    whose message says what to change."""
    return "\n".join(
        [
            f"run {run_id}: no item was answered: {counts['failed']} of {counts['items']} items failed and "
            f"{counts['manifest_errors']} manifest rows were rejected",
            f"  errors: {digest.describe() or 'none recorded'} (every row in {errors_uri})",
            f"  first: {digest.first_message}" if digest.first_message else "  first: -",
            "  fix what the first error says and run again; the report shows the failures by stage and type",
        ]
    )


def run_counts(
    manifest: Manifest,
    plan: RunPlan,
    stored: dict[str, int],
    done: list[ShardSummary],
    failed: list[ShardFailure],
) -> dict[str, int]:
    """run.json's counts: totals from the committed parts (`count_outputs`), this attempt's shard figures.
    `manifest` holds the audited items (all the manifest's, or a first look's selection)."""
    return {
        "manifest_rows": len(manifest.items) + len(manifest.errors),
        "items": len(manifest.items),
        "manifest_errors": len(manifest.errors),
        **{key: stored[key] for key in ("ok", "failed", "errors", "targets")},
        "overlays_written": sum(summary.overlays for summary in done),
        "shards": plan.n_shards,
        "shards_done": stored["shards_done"],
        "shards_skipped": len(plan.done),
        "shards_failed": len(failed),
        "shards_deferred": sum(failure.deferred for failure in failed),
    }


def worker_report(summaries: list[ShardSummary]) -> list[dict[str, Any]]:
    """Per worker process: shards run, models loaded, and the most shards it ran at the same time.

    One model load per process and at most one shard at a time per GPU worker are the scale-out
    contract (docs/pipeline.md); run.json records both so a misconfigured cluster shows.
    """
    by_worker: dict[str, list[ShardSummary]] = {}
    for summary in summaries:
        by_worker.setdefault(summary.worker.name, []).append(summary)
    report = []
    for name, shards in sorted(by_worker.items()):
        edges = sorted([(s.started_at, 1) for s in shards] + [(s.finished_at, -1) for s in shards])
        running = peak = 0
        for _time, step in edges:  # an end sorts before a start at the same instant
            running += step
            peak = max(peak, running)
        report.append(
            {
                "worker": name,
                "shards": len(shards),
                "model_loads": max(s.worker.model_loads for s in shards),
                "max_concurrent_shards": peak,
            }
        )
    return report


def run_record(
    run_id: str,
    config: AuditConfig,
    manifest: Manifest,
    fingerprint: str,
    *,
    status: str,
    attempt: int,
    started_at: str,
    counts: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
    model_revision: str | None = None,
    finished_at: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The run.json document (`storage.RunRecord`, docs/outputs.md). Holds no secret: the config has no
    credential fields. `extra` are further RunRecord fields (dask, flow_run_id, workers, ...)."""
    return RunRecord(
        run_id=run_id,
        status=status,
        attempt=attempt,
        config=config.model_dump(mode="json"),
        identity=config.identity(),
        manifest_uri=manifest.uri,
        manifest_fingerprint=fingerprint,
        manifest_columns=list(manifest.columns),
        model_id=config.model,
        model_revision=model_revision,
        code_version=code_version(),
        schema_version=SCHEMA_VERSION,
        counts=counts or {},
        timings=timings or {},
        started_at=started_at,
        finished_at=finished_at,
        **extra,
    ).to_row()
