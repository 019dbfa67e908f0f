"""What an audit run tells its caller: the typed run summary, this attempt's timings, and the verdict.

The flow (`flows.audit.audit`) only calls tasks; the pieces of its outcome are built here, next to the
ledger: `record_attempt` writes run.json and returns the `RunSummary`, `judge` adds the verdict and the
gate from the run's flags. The CLI, the Prefect artifacts and the demo read the summary's attributes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from auditing.gate import GateOutcome, gate
from auditing.report.summary import verdict
from storage import FlagRecord, Manifest, ObjectStore, write_run
from tasks import ledger
from tasks.config import AuditConfig, DaskSettings
from tasks.preflight import CheckedRun, OutsideInputs
from tasks.shards import ShardFailure, ShardSummary
from vocabulary.names import ITEM_SCOPE

FIRST_FAILURES = 20  # run.json keeps the first shard failures, not all of them


@dataclass(frozen=True)
class RunStart:
    """When an attempt started: its ISO 8601 UTC time (run.json) and the performance clock (timings)."""

    at: str
    clock: float

    @classmethod
    def now(cls) -> RunStart:
        return cls(ledger.now_iso(), time.perf_counter())


def run_context(
    checked: CheckedRun, manifest: Manifest, dask: DaskSettings | None, flow_run_id: str | None
) -> ledger.RunContext:
    """How this attempt runs (run.json): `checked` is the pre-flight's outcome for `manifest`; a first
    look (`limit` or `sample`) records its selection."""
    config = checked.config
    first_look = checked.audited is not manifest
    return ledger.RunContext(
        dask=dask.describe() if dask else None,
        flow_run_id=flow_run_id,
        groupings_from=checked.groupings_from,
        selection={"limit": config.limit, "sample": config.sample, "of_items": len(manifest.items)}
        if first_look
        else None,
    )


@dataclass(frozen=True)
class RunSummary:
    """What a completed run returns: its id, where its outputs are, its counts and timings, and after
    aggregation its flags, verdict and gate (None while not aggregated)."""

    run_id: str
    out: str
    group_by: tuple[str, ...]
    groupings_from: str
    selection: dict[str, Any] | None
    run_json: str
    counts: dict[str, int]
    timings: dict[str, float]
    shard_failures: tuple[str, ...] = ()
    flags: int | None = None
    verdict: str | None = None
    cohort_flags: tuple[FlagRecord, ...] = ()  # the model-level flags (cohort, cluster, trust)
    gate: GateOutcome | None = None
    report: str | None = None
    outside_inputs: OutsideInputs | None = None  # items naming inputs outside the allowed prefixes

    @property
    def nothing_answered(self) -> bool:
        """Did every item (and every manifest row) fail?"""
        return self.counts["ok"] == 0 and self.counts["items"] + self.counts["manifest_errors"] > 0


def attempt_timings(
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


def record_attempt(
    store: ObjectStore,
    config: AuditConfig,
    plan: ledger.RunPlan,
    audited: Manifest,
    context: ledger.RunContext,
    started: RunStart,
    shards: list[ShardSummary | ShardFailure],
) -> RunSummary:
    """Count the committed outputs, write the attempt's final run.json ("failed" when shards did not
    commit, "completed" otherwise) and return the run's summary."""
    failed = [shard for shard in shards if isinstance(shard, ShardFailure)]
    done = [shard for shard in shards if isinstance(shard, ShardSummary)]
    counts = ledger.run_counts(audited, plan, ledger.count_outputs(store, plan.run_id), done, failed)
    timings = attempt_timings(done, time.perf_counter() - started.clock)
    record = ledger.run_record(
        plan.run_id,
        config,
        audited,
        plan.fingerprint,
        status="failed" if failed else "completed",
        attempt=plan.attempt,
        started_at=started.at,
        counts=counts,
        timings=timings,
        model_revision=next((summary.model_revision for summary in done if summary.model_revision), None),
        finished_at=ledger.now_iso(),
        workers=ledger.worker_report(done),
        errors_of_failed_shards=[failure.error for failure in failed][:FIRST_FAILURES],
        **context.record_fields(),
    )
    return RunSummary(
        run_id=plan.run_id,
        out=config.out,
        group_by=tuple(config.aggregation.group_by),
        groupings_from=context.groupings_from,
        selection=context.selection,
        run_json=write_run(store, plan.run_id, record),
        counts=counts,
        timings=timings,
        shard_failures=tuple(failure.error for failure in failed),
    )


def judge(summary: RunSummary, flags: list[FlagRecord], config: AuditConfig) -> RunSummary:
    """The summary with the run's flags judged: their number, the verdict, the model-level flags and
    the gate (`auditing.gate`: `fail_on_flags`, `max_item_flag_rate`)."""
    return replace(
        summary,
        flags=len(flags),
        verdict=verdict(flags),
        cohort_flags=tuple(flag for flag in flags if flag.scope != ITEM_SCOPE),
        gate=gate(
            flags,
            summary.counts["ok"],
            config.aggregation.fail_on_flags,
            config.aggregation.max_item_flag_rate,
        ),
    )
