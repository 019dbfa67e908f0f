"""Prefect tasks: thin wrappers over the plain functions of this package.

Storage I/O tasks retry with exponential backoff, only for transient errors (`retry.retry_condition`).
`explain_shard_task` retries only when an item was deferred by a transient outage (its reads already
retried with backoff); a deterministic failure would fail again, and a rerun of the run id redoes
exactly the shards that did not commit.
"""

from __future__ import annotations

import re

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.tasks import exponential_backoff

from auditing import aggregate_run as audit_aggregate_run
from auditing import build_report as audit_build_report
from auditing.report.summary import FLAG_FIELDS, plain, run_markdown
from storage import FlagRecord, Manifest, join_uri, read_manifest
from tasks import cache, ledger, run_summary
from tasks.config import AuditConfig
from tasks.retry import retry_condition
from tasks.run_summary import RunStart, RunSummary
from tasks.shards import ShardFailure, ShardJob, ShardSummary
from vocabulary.names import ITEM_SCOPE

STORAGE_IO = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_condition,
    "cache_policy": NO_CACHE,
}


@task(name="read-manifest", **STORAGE_IO)
def load_manifest(config: AuditConfig) -> Manifest:
    """Read and validate the manifest (a missing required column fails the run with `ManifestError`)."""
    reader = cache.reader(config.endpoint_url, config.region)
    return read_manifest(config.manifest, cache=reader)


@task(name="plan-run", **STORAGE_IO)
def plan_run(
    config: AuditConfig, run_id: str, manifest: Manifest, fingerprint: str, context: ledger.RunContext
) -> ledger.RunPlan:
    """Done shards from the store; manifest errors part and a 'running' run.json written."""
    store = cache.output_store(config.out, config.endpoint_url, config.region)
    return ledger.plan_run(store, run_id, config, manifest, fingerprint, context)


@task(
    name="explain-shard",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[10, 30],
    retry_condition_fn=retry_condition,
)
def explain_shard_task(job: ShardJob) -> ShardSummary:
    """One shard on whichever worker runs it; returns its small summary."""
    from tasks.worker import explain_shard  # torch loads here, in the worker process

    return explain_shard(job)


@task(name="record-attempt", **STORAGE_IO)
def record_attempt(
    config: AuditConfig,
    plan: ledger.RunPlan,
    audited: Manifest,
    context: ledger.RunContext,
    started: RunStart,
    shards: list[ShardSummary | ShardFailure],
) -> RunSummary:
    """Counts from the committed parts, the attempt's final run.json written; returns the run's summary."""
    store = cache.output_store(config.out, config.endpoint_url, config.region)
    return run_summary.record_attempt(store, config, plan, audited, context, started, shards)


@task(name="describe-failures", **STORAGE_IO)
def describe_failures(config: AuditConfig, run_id: str, counts: dict[str, int]) -> str:
    """A few lines for a run in which no item was answered (`ledger.nothing_answered_message`)."""
    store = cache.output_store(config.out, config.endpoint_url, config.region)
    errors_uri = join_uri(config.out, "errors", f"run_id={run_id}")
    return ledger.nothing_answered_message(run_id, counts, ledger.error_digest(store, run_id), errors_uri)


@task(name="aggregate-run", **STORAGE_IO)
def aggregate_run(config: AuditConfig, run_id: str) -> list[FlagRecord]:
    """Cohort statistics, comparisons and flags from the run's Parquet outputs; returns the flags."""
    result = audit_aggregate_run(
        config.out,
        run_id,
        config.aggregate_config(),
        endpoint_url=config.endpoint_url,
    )
    get_run_logger().info("run %s: %d flags raised", run_id, len(result.flags))
    return result.flags


@task(name="judge-run", cache_policy=NO_CACHE)
def judge_run(summary: RunSummary, flags: list[FlagRecord], config: AuditConfig) -> RunSummary:
    """The summary with the flags' verdict and the run's gate."""
    return run_summary.judge(summary, flags, config)


def artifact_key(run_id: str) -> str:
    """Prefect artifact keys take lower-case letters, digits and dashes."""
    return "vlm-audit-" + (re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-") or "run")


FLAG_EVENT = "vlm-audit.flag.raised"


@task(name="publish-results", cache_policy=NO_CACHE)
def publish_results(summary: RunSummary, flags: list[FlagRecord]) -> None:
    """What Prefect users see and automations react to: a Markdown artifact with the verdict, the flag
    table and the report's link; a table artifact of every flag; one `vlm-audit.flag.raised` event
    per cohort flag (resource: the run; payload: the flag)."""
    run_id, report = summary.run_id, summary.report
    key = artifact_key(run_id)
    create_markdown_artifact(
        markdown=run_markdown(run_id, flags, summary.counts, report),
        key=key,
        description=f"vlm-audit run {run_id}",
    )
    create_table_artifact(
        table=[{field: plain(flag)[field] for field in ("title", "scope", *FLAG_FIELDS)} for flag in flags],
        key=f"{key}-flags",
        description=f"flags of vlm-audit run {run_id}",
    )
    resource = {
        "prefect.resource.id": f"vlm-audit.run.{run_id}",
        "prefect.resource.name": run_id,
        "vlm-audit.out": summary.out,
    }
    for flag in flags:
        if flag.scope != ITEM_SCOPE:
            emit_event(
                event=FLAG_EVENT,
                resource=resource,
                payload={**plain(flag), "run_id": run_id, "report": report},
            )


@task(name="build-report", **STORAGE_IO)
def build_report(config: AuditConfig, run_id: str) -> str:
    """The static HTML report of the run; returns its URI."""
    return audit_build_report(config.out, run_id, endpoint_url=config.endpoint_url)
