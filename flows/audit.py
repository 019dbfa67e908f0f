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

import time
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import get_run_context
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from auditing.gate import gate
from auditing.report.summary import verdict
from flows.runners import task_resources, task_runner_for
from tasks import cache, ledger, steps
from tasks.config import AuditConfig, DaskSettings
from tasks.lock import run_lock
from tasks.preflight import check_run
from tasks.shards import ItemDeferred, ShardFailure, ShardJob, ShardSummary, sampled_item_ids
from vocabulary.names import ITEM_SCOPE


class ShardsFailed(RuntimeError):
    """Some shards did not commit; rerunning the same run id redoes exactly those."""


class NothingAnswered(RuntimeError):
    """The run completed and no item was answered (every item and row failed): the message gives the
    counts, the error types and the first error; `outputs` is the run's summary."""

    def __init__(self, message: str, outputs: dict[str, Any]) -> None:
        super().__init__(message)
        self.outputs = outputs


class AuditFlagged(RuntimeError):
    """The run completed and its gate (`fail_on_flags`, `max_item_flag_rate`) failed; `outputs` is
    the run's summary, as a passing run returns it."""

    def __init__(self, message: str, outputs: dict[str, Any]) -> None:
        super().__init__(message)
        self.outputs = outputs


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
) -> dict[str, Any]:
    """Audit every item of a manifest; returns the run's summary (run id, counts, where outputs are).

    Raises `ManifestError` (e.g. a missing required column), a storage error (e.g. wrong
    credentials, an unwritable output root) or `RunLocked` (another process computes this run id)
    before anything is written; `ShardsFailed` after run.json when shards did not commit;
    `AuditFlagged` (the summary in its `outputs`) when the run's gate failed, its state "Flagged";
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
    started, started_at = time.perf_counter(), ledger.now_iso()
    parsed = steps.load_manifest(config)
    # before anything runs: the cohort columns exist, the model is there (nothing downloads unasked)
    inputs = check_run(config, parsed, run_id)
    config, run_id, fingerprint, audited = (
        inputs.config,
        inputs.run_id,
        inputs.fingerprint,
        inputs.audited,
    )
    if inputs.groupings_from != "settings":
        logger.warning(
            "no group_by given: cohorts by %s",
            ", ".join(config.group_by)
            if config.group_by
            else "nothing (no metadata column with 2-12 values); only whole-run statistics",
        )
    extra = {
        "dask": dask.describe() if dask else None,
        "flow_run_id": str(get_run_context().flow_run.id),
        "groupings_from": inputs.groupings_from,
    }
    if inputs.outside.items:  # said once here; each such item also becomes an error row
        logger.warning("%s", inputs.outside.describe(len(audited.items)))
    if audited is not parsed:
        extra["selection"] = {"limit": config.limit, "sample": config.sample, "of_items": len(parsed.items)}
        logger.warning("a first look: %d of the manifest's %d items", len(audited.items), len(parsed.items))
    # one process at a time per run id: a second run of the same manifest and settings is refused
    with run_lock(
        cache.output_store(config.out, config.endpoint_url, config.region),
        run_id,
        flow_run_id=extra["flow_run_id"],
    ):
        plan = steps.plan_run(config, run_id, audited, fingerprint, extra)
        cache.remember_manifest(parsed, fingerprint)  # in-process shards reuse it instead of reading it again
        logger.info(
            "run %s: %d items, %d manifest errors, %d shards (%d done before, %d to do)",
            run_id, len(audited.items), len(parsed.errors), plan.n_shards, len(plan.done), len(plan.pending),
        )  # fmt: skip
        checked = sorted(
            sampled_item_ids(
                (item.item_id for item in audited.items), config.faithfulness_sample, seed=run_id
            )
        )
        summaries = []
        if plan.pending and dask is not None:  # a subflow, because only a flow can choose its task runner
            summaries = explain_shards.with_options(task_runner=task_runner_for(dask))(
                config, run_id, fingerprint, plan.pending, dask=dask, progress=progress, checked_items=checked
            )
        elif plan.pending:  # this flow's runner: shard threads sharing the model this process keeps
            summaries = run_shards(
                config, run_id, fingerprint, plan.pending, progress=progress, checked_items=checked
            )
        failed = [summary for summary in summaries if isinstance(summary, ShardFailure)]
        done = [summary for summary in summaries if isinstance(summary, ShardSummary)]
        counts = ledger.run_counts(audited, plan, steps.count_outputs(config, run_id), done, failed)
        timings = _timings(done, time.perf_counter() - started)
        revision = next((summary.model_revision for summary in done if summary.model_revision), None)
        record = ledger.run_record(
            run_id,
            config,
            audited,
            fingerprint,
            status="failed" if failed else "completed",
            attempt=plan.attempt,
            started_at=started_at,
            counts=counts,
            timings=timings,
            model_revision=revision,
            finished_at=ledger.now_iso(),
            workers=ledger.worker_report(done),
            errors_of_failed_shards=[failure.error for failure in failed][:20],
            **extra,
        )
        run_json = steps.write_run_json(config, run_id, record)
        if failed:
            raise ShardsFailed(
                f"{len(failed)} of {plan.n_shards} shards of run {run_id} did not commit (first: {failed[0].error}); "
                "rerun with the same run id to redo only those"
            )
        outputs = {
            "run_id": run_id,
            "out": config.out,
            "group_by": list(config.group_by),
            "groupings_from": inputs.groupings_from,
            "selection": extra.get("selection"),
            "outside_inputs": inputs.outside,
            "run_json": run_json,
            "counts": counts,
            "timings": timings,
        }
        if counts["ok"] == 0 and counts["items"] + counts["manifest_errors"] > 0:
            # aggregated and reported all the same: the report tabulates the failures
            if config.aggregate:
                steps.aggregate_run(config, run_id)
                if config.report:
                    outputs["report"] = steps.build_report(config, run_id)
            message = steps.describe_failures(config, run_id, counts)
            return Failed(name="NothingAnswered", message=message, data=NothingAnswered(message, outputs))
        if not config.aggregate:
            return Completed(message="completed; cohort statistics and flags not computed", data=outputs)
        flags = steps.aggregate_run(config, run_id)
        outcome = gate(flags, counts["ok"], config.fail_on_flags, config.max_item_flag_rate)
        outputs |= {
            "flags": len(flags),
            "verdict": verdict(flags),
            "cohort_flags": [flag for flag in flags if flag.scope != ITEM_SCOPE],
            "gate": outcome,
        }
        if config.report:
            outputs["report"] = steps.build_report(config, run_id)
        steps.publish_results(config, run_id, flags, counts, outputs.get("report"))
        if outcome.failed:  # a Failed run that automations see; the CLI reads the summary from it
            message = f"{outputs['verdict']} Gate failed: {outcome.reason}."
            return Failed(name="Flagged", message=message, data=AuditFlagged(message, outputs))
        return Completed(message=outputs["verdict"], data=outputs)  # the flow run's state says the verdict


def _timings(
    summaries: list[ShardSummary], total_seconds: float, *, now: float | None = None
) -> dict[str, float]:
    """Seconds of this attempt, from the flow's start to run.json (`total_seconds`, wall clock).

    Wall-clock parts of the total, from the shards' wall-clock start and end (`now`: time.time()
    at the call): `before_shards_seconds` (manifest, pre-flight, planning, scheduling, until the first
    shard starts), `shards_wall_seconds` (first shard start to last shard end), `after_shards_seconds`
    (counting outputs); clamped so that they never exceed the total (remote workers' clocks may
    differ), the rest is not attributed. The stage figures are sums over shards, so over `workers`
    processes in parallel they can exceed `shards_wall_seconds`; so can `shard_seconds`, their sum.
    """
    now = time.time() if now is None else now
    items = sum(summary.items for summary in summaries)
    timings = {
        "total_seconds": round(total_seconds, 3),
        "model_load_seconds": round(sum(s.model_load_seconds for s in summaries), 3),
        "generate_seconds": round(sum(s.generate_seconds for s in summaries), 3),
        "explain_seconds": round(sum(s.explain_seconds for s in summaries), 3),
        "faithfulness_seconds": round(sum(s.faithfulness_seconds for s in summaries), 3),
        "write_seconds": round(sum(s.write_seconds for s in summaries), 3),
        "shard_seconds": round(sum(s.seconds for s in summaries), 3),
        "items_per_second": round(items / total_seconds, 4) if total_seconds > 0 else 0.0,
    }
    if not summaries:
        return timings
    flow_started = now - total_seconds
    first, last = min(s.started_at for s in summaries), max(s.finished_at for s in summaries)
    before = min(max(first - flow_started, 0.0), total_seconds)
    shards = min(max(last - first, 0.0), total_seconds - before)
    after = min(max(now - last, 0.0), total_seconds - before - shards)
    return timings | {
        "before_shards_seconds": round(before, 3),
        "shards_wall_seconds": round(shards, 3),
        "after_shards_seconds": round(after, 3),
        "workers": len({(s.worker.host, s.worker.pid) for s in summaries}),
    }
