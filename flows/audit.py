"""`audit`: manifest → shards → explain on workers → Parquet parts + overlays → run.json → cohort stats.

    from flows.audit import audit
    from tasks.config import AuditConfig
    audit(AuditConfig(manifest="s3://scans/batch-07/manifest.csv", out="s3://audits/out",
                      model="google/medgemma-1.5-4b-it"))

Rerunning with the same manifest content and settings resumes: the run id is derived from both, and
shards whose answers part exists are skipped. Shards run in this process one at a time on the model
it keeps loaded (`flows.runners.LOCAL_SHARD_THREADS`), or on Dask (`dask={"address":
"tcp://scheduler:8786"}` or `{"n_workers": 2}`) through the `explain-shards` subflow.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import PurePosixPath

from prefect import flow, get_run_logger
from prefect.context import get_run_context
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from flows.runners import task_resources, task_runner_for
from tasks import cache, steps
from tasks.config import AuditConfig, DaskSettings
from tasks.lock import run_lock
from tasks.preflight import check_run
from tasks.run_summary import RunStart, RunSummary, run_context
from tasks.shards import ItemDeferred, ShardFailure, ShardJob, ShardSummary, sampled_item_ids


class ShardsFailed(RuntimeError):
    """Some shards did not commit; rerunning the same run id redoes exactly those."""


class NothingAnswered(RuntimeError):
    """The run completed and no item was answered (every item and row failed): the message gives the
    counts, the error types and the first error; `summary` is the run's summary."""

    def __init__(self, message: str, summary: RunSummary) -> None:
        super().__init__(message)
        self.summary = summary


class AuditFlagged(RuntimeError):
    """The run completed and its gate (`fail_on_flags`, `max_item_flag_rate`) failed; `summary` is
    the run's summary, as a passing run returns it."""

    def __init__(self, message: str, summary: RunSummary) -> None:
        super().__init__(message)
        self.summary = summary


def run_shards(
    config: AuditConfig,
    run_id: str,
    fingerprint: str,
    shard_indices: list[int],
    dask: DaskSettings | None = None,
    progress: bool = False,
    checked_items: list[str] | None = None,
) -> list[ShardSummary | ShardFailure]:
    """Submit the shards on the current flow's task runner; one summary (or failure) per shard."""
    checked = frozenset(checked_items or ())
    with task_resources(dask):
        futures = [
            steps.explain_shard_task.submit(ShardJob(run_id, index, fingerprint, config, checked))
            for index in shard_indices
        ]
    shard_of = {future.task_run_id: index for future, index in zip(futures, shard_indices, strict=True)}
    summaries: list[ShardSummary | ShardFailure] = []
    bar = _progress_bar(len(futures), progress)
    ok = failed = 0
    for future in as_completed(futures):
        outcome = future.result(raise_on_failure=False)  # the summary, or the exception of a failed shard
        if isinstance(outcome, ShardSummary):
            summaries.append(outcome)
            ok, failed = ok + outcome.ok, failed + outcome.failed
        else:
            shard = shard_of[future.task_run_id]
            summaries.append(
                ShardFailure(
                    shard,
                    f"shard {shard}: {type(outcome).__name__}: {outcome}",
                    deferred=isinstance(outcome, ItemDeferred),
                )
            )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(ok=ok, failed=failed)
    if bar is not None:
        bar.close()
    return summaries


@flow(name="explain-shards")
def explain_shards(
    config: AuditConfig,
    run_id: str,
    fingerprint: str,
    shard_indices: list[int],
    dask: DaskSettings | None = None,
    progress: bool = False,
    checked_items: list[str] | None = None,
) -> list[ShardSummary | ShardFailure]:
    """The shards on this subflow's task runner (a DaskTaskRunner: see `audit`)."""
    return run_shards(config, run_id, fingerprint, shard_indices, dask, progress, checked_items)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="shard", desc="explaining")


def run_name() -> str:
    """`<manifest name>-<UTC date and time>`: what a scheduled run's name should tell at a glance."""
    config = flow_run.parameters.get("config") or {}
    manifest = config.get("manifest", "") if isinstance(config, dict) else config.manifest
    stem = PurePosixPath(str(manifest).rstrip("/")).name.split(".")[0] or "manifest"
    return f"{stem}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


@flow(name="vlm-audit", flow_run_name=run_name, task_runner=task_runner_for(None))
def audit(
    config: AuditConfig,
    run_id: str | None = None,
    dask: DaskSettings | None = None,
    progress: bool = False,
) -> RunSummary:
    """Audit every item of a manifest; returns the run's summary (`tasks.run_summary.RunSummary`: run
    id, counts, timings, where the outputs are, the verdict and the gate).

    Raises `ManifestError` (e.g. a missing required column), a storage error (e.g. wrong
    credentials, an unwritable output root) or `RunLocked` (another process computes this run id)
    before anything is written; `ShardsFailed` after run.json when shards did not commit;
    `AuditFlagged` (the summary in its `summary`) when the run's gate failed, its state "Flagged";
    `NothingAnswered` when every item failed, its state "NothingAnswered".

    Args:
        config: the run's settings (`tasks.config.AuditConfig`: manifest, output root, model, method,
            targets, cohorts, faithfulness sample ...).
        run_id: the run id to use or resume; default: derived from the manifest's content and the
            settings that decide the results.
        dask: run the shards on a Dask cluster (an existing scheduler or a local one) instead of in
            this process.
        progress: show a progress bar over shards on the terminal.
    """
    logger = get_run_logger()
    started = RunStart.now()
    parsed = steps.load_manifest(config)
    # before anything runs: the cohort columns exist, the model is there (nothing downloads unasked)
    checked = check_run(config, parsed, run_id)
    config, run_id, fingerprint, audited = (
        checked.config,
        checked.run_id,
        checked.fingerprint,
        checked.audited,
    )
    context = run_context(checked, parsed, dask, str(get_run_context().flow_run.id))
    if context.groupings_from != "settings":
        logger.warning(
            "no group_by given: cohorts by %s",
            ", ".join(config.aggregation.group_by)
            if config.aggregation.group_by
            else "nothing (no metadata column with 2-12 values); only whole-run statistics",
        )
    if checked.outside.items:  # said once here; each such item also becomes an error row
        logger.warning("%s", checked.outside.describe(len(audited.items)))
    if context.selection:
        logger.warning("a first look: %d of the manifest's %d items", len(audited.items), len(parsed.items))
    # one process at a time per run id: a second run of the same manifest and settings is refused
    with run_lock(
        cache.output_store(config.out, config.endpoint_url, config.region),
        run_id,
        flow_run_id=context.flow_run_id,
    ):
        plan = steps.plan_run(config, run_id, audited, fingerprint, context)
        cache.remember_manifest(parsed, fingerprint)  # in-process shards reuse it instead of reading it again
        logger.info(
            "run %s: %d items, %d manifest errors, %d shards (%d done before, %d to do)",
            run_id, len(audited.items), len(parsed.errors), plan.n_shards, len(plan.done), len(plan.pending),
        )  # fmt: skip
        checked_items = sorted(
            sampled_item_ids(
                (item.item_id for item in audited.items), config.faithfulness_sample, seed=run_id
            )
        )
        shards = []
        if plan.pending and dask is not None:  # a subflow, because only a flow can choose its task runner
            shards = explain_shards.with_options(task_runner=task_runner_for(dask))(
                config, run_id, fingerprint, plan.pending, dask=dask, progress=progress,
                checked_items=checked_items,
            )  # fmt: skip
        elif plan.pending:  # this flow's runner: shard threads sharing the model this process keeps
            shards = run_shards(
                config, run_id, fingerprint, plan.pending, progress=progress, checked_items=checked_items
            )
        summary = steps.record_attempt(config, plan, audited, context, started, shards)
        if summary.shard_failures:
            raise ShardsFailed(
                f"{len(summary.shard_failures)} of {plan.n_shards} shards of run {run_id} did not commit "
                f"(first: {summary.shard_failures[0]}); rerun with the same run id to redo only those"
            )
        summary = replace(summary, outside_inputs=checked.outside)
        if config.aggregate:  # a run without answers too: its report tabulates the failures
            flags = steps.aggregate_run(config, run_id)
            summary = steps.judge_run(summary, flags, config)
            if config.aggregation.report:
                summary = replace(summary, report=steps.build_report(config, run_id))
            steps.publish_results(summary, flags)
        if summary.nothing_answered:
            message = steps.describe_failures(config, run_id, summary.counts)
            return Failed(name="NothingAnswered", message=message, data=NothingAnswered(message, summary))
        if not config.aggregate:
            return Completed(message="completed; cohort statistics and flags not computed", data=summary)
        if summary.gate.failed:  # a Failed run that automations see; the CLI reads the summary from it
            message = f"{summary.verdict} Gate failed: {summary.gate.reason}."
            return Failed(name="Flagged", message=message, data=AuditFlagged(message, summary))
        return Completed(message=summary.verdict, data=summary)  # the flow run's state says the verdict
