"""`vlm-audit`: run an audit, run the demo, and (through the audit package) aggregate, report and
write the dashboard views.

    vlm-audit run s3://scans/batch-07/manifest.csv --out s3://audits/out --model google/medgemma-1.5-4b-it
    vlm-audit demo --out demo-output --n 24

With no PREFECT_API_URL, Prefect starts a temporary local server for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence

from pydantic import ValidationError

from auditing.gate import FAIL_ON_CHOICES
from flows import api_watch
from flows.options import add_field_options, given_fields, settings_error
from tasks.config import AggregationSettings, AuditConfig, DaskSettings
from tasks.run_summary import RunSummary

EXIT_OK, EXIT_UNFINISHED, EXIT_USAGE, EXIT_FLAGGED, EXIT_API_LOST = 0, 1, 2, 3, 4
# every AuditConfig field (and every field of its aggregation settings) is an option of `run` and `demo`,
# but for the manifest (positional, or the demo's own), the output root (`--out`), and the gate
# (`--fail-on-flags`, whose value may be left out)
RUN_FIELDS = [name for name in AuditConfig.model_fields if name not in ("manifest", "out", "aggregation")]
AGGREGATION_FIELDS = [name for name in AggregationSettings.model_fields if name != "fail_on_flags"]
DASK_ALIASES = {"n_workers": "--dask-workers", "resources": "--dask-resource"}


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fail-on-flags",
        nargs="?",
        const="model",
        choices=[choice for choice in FAIL_ON_CHOICES if choice != "never"],
        default=argparse.SUPPRESS,
        help=AggregationSettings.model_fields["fail_on_flags"].description
        + "; with no value: 'model' (default: never)",
    )
    add_field_options(parser, AuditConfig, RUN_FIELDS)
    add_field_options(parser, AggregationSettings, AGGREGATION_FIELDS)
    parser.add_argument("--run-id", help="default: derived from the manifest's content and these settings")
    dask = parser.add_argument_group("Dask", "run the shards on a Dask cluster instead of in this process")
    add_field_options(dask, DaskSettings, DaskSettings.model_fields, prefix="dask_", aliases=DASK_ALIASES)
    parser.add_argument("--verbose", action="store_true", help="show Prefect's per-task log lines")


def build_parser() -> argparse.ArgumentParser:
    from storage import code_version

    parser = argparse.ArgumentParser(prog="vlm-audit", description="Audit where a medical VLM looks.")
    parser.add_argument("--version", action="version", version=f"vlm-audit {code_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="audit the items of a manifest")
    run.add_argument("manifest", help=AuditConfig.model_fields["manifest"].description)
    run.add_argument("--out", required=True, help=AuditConfig.model_fields["out"].description)
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check the manifest, cohort columns, model and output root and print the plan (run id, items, "
        "shards to run or skip, cohorts); writes and runs nothing",
    )
    _add_run_options(run)
    demo = commands.add_parser("demo", help="write phantom cases and audit them with the phantom model")
    demo.add_argument("--out", default="demo-output", help="local folder for the data and the outputs")
    demo.add_argument(
        "--n", type=int, help="number of phantom cases (default: 24; 8 of each kind with --studies)"
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--studies",
        action="store_true",
        help="audit phantom studies instead: MR volumes as DICOM series and prior/current pairs, "
        "with the study model",
    )
    _add_run_options(demo)
    # a few shards so the progress bar moves; short answers (faithfulness sample: see _demo)
    demo.set_defaults(shard_size=4, max_new_tokens=8)
    for name, text in (
        ("aggregate", "recompute cohort statistics and flags of a run"),
        ("report", "rebuild the HTML report of a run"),
    ):
        sub = commands.add_parser(name, help=f"{text} from its Parquet outputs (no model needed)")
        sub.add_argument("out", help=AuditConfig.model_fields["out"].description)
        sub.add_argument("run_id")
        if name == "aggregate":
            add_field_options(sub, AggregationSettings, ["group_by"])
            add_field_options(sub, AuditConfig, ["findings"])
        add_field_options(sub, AuditConfig, ["endpoint_url"])
    views = commands.add_parser(
        "views",
        help="create or refresh the dashboard views over every run in a DuckDB file (no model needed)",
    )
    views.add_argument("out", help=AuditConfig.model_fields["out"].description)
    views.add_argument("database", help="DuckDB file for dashboard tools (created if missing)")
    add_field_options(views, AuditConfig, ["endpoint_url"])
    return parser


def audit_config(args: argparse.Namespace, manifest: str, out: str) -> AuditConfig:
    """The run's settings from parsed `run`/`demo` arguments (validated: a bad value raises here)."""
    aggregation = AggregationSettings(**given_fields(args, AggregationSettings))  # its errors name the option
    return AuditConfig(
        **{**given_fields(args, AuditConfig), "manifest": manifest, "out": out, "aggregation": aggregation}
    )


def dask_settings(args: argparse.Namespace) -> DaskSettings | None:
    """The Dask cluster the arguments name, or None to run the shards in this process."""
    given = given_fields(args, DaskSettings, prefix="dask_")
    return DaskSettings(**given) if given else None


def format_summary(summary: RunSummary) -> str:
    """Counts and where the outputs are, for the terminal."""
    from storage import join_uri

    counts, run_id, out = summary.counts, summary.run_id, summary.out
    where = lambda table: join_uri(out, table, f"run_id={run_id}")  # noqa: E731
    lines = [
        f"run {run_id}: {counts['items']} items ({counts['ok']} ok, {counts['failed']} failed), "
        f"{counts['targets']} token rows, {counts['errors']} error rows "
        f"({counts['manifest_errors']} from the manifest); {counts['shards_skipped']} of {counts['shards']} "
        f"shards were already done; {summary.timings['total_seconds']:.1f} s",
        f"  answers   {where('answers')}/*.parquet",
        f"  tokens    {where('tokens')}/*.parquet",
        f"  mentions  {where('mentions')}/*.parquet",
        f"  errors    {where('errors')}/*.parquet",
        f"  overlays  {where('overlays')}/<item_id>/<target>.png",
        f"  run.json  {summary.run_json}",
        f"  report    {where('report')}/index.html (vlm-audit report {out} {run_id})",
    ]
    if summary.selection:
        selection = summary.selection
        how = (
            f"the first {selection['limit']}"
            if selection["limit"]
            else f"a random sample of {selection['sample']}"
        )
        lines.append(f"a first look: {how} of the manifest's {selection['of_items']} items")
    if summary.outside_inputs and summary.outside_inputs.items:
        lines.append(summary.outside_inputs.describe(counts["items"]))
    lines.append(
        f"cohorts by {', '.join(summary.group_by) or 'nothing: whole-run statistics only'} "
        f"({summary.groupings_from})"
    )
    if summary.verdict is not None:
        lines.append(summary.verdict)
        lines += [
            f"  FLAG {flag.rule} [{flag.method}] {flag.grouping}={flag.cohort}, '{flag.target_class}'"
            for flag in summary.cohort_flags
        ]
        gate = summary.gate
        if gate.item_flags:
            lines.append(
                f"{gate.item_flags} item flags on {gate.flagged_items} of {gate.audited_items} answered items "
                f"({gate.item_flag_rate:.1%}): a worklist for review, in {where('flags')} (scope 'item') and "
                "the report's flags table"
            )
        if gate.reason != "not gated":
            lines.append(f"gate: {'FAILED, ' if gate.failed else ''}{gate.reason}")
    return "\n".join(lines)


def _prepare_environment(verbose: bool) -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not verbose:
        # the progress bar, the summary and the one-line errors below say enough; --verbose shows Prefect's logs
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    from explainer.runtime import keep_freed_memory

    keep_freed_memory()


@contextlib.contextmanager
def _prefect_api() -> Iterator[None]:
    """The Prefect API the flows report to: PREFECT_API_URL, else a temporary server of this process
    (`flows.server`: it dies with the CLI, even when the CLI is killed)."""
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.server import temporary_server

    print(
        "starting a temporary local Prefect server (set PREFECT_API_URL to use a running one)",
        file=sys.stderr,
    )
    started = time.perf_counter()
    with temporary_server() as api_url, temporary_settings({PREFECT_API_URL: api_url}):
        # not part of a run's timings (run.json counts from the flow's start): said here instead
        print(f"Prefect server ready in {time.perf_counter() - started:.1f} s at {api_url}", file=sys.stderr)
        yield


def _run_flow(
    config: AuditConfig, run_id: str | None, dask: DaskSettings | None
) -> tuple[int, RunSummary | None]:
    """Run the audit flow; the exit code and, when it completed, its summary. A Prefect API that stops
    answering for longer than `api_watch.wait_seconds()` ends the process with `EXIT_API_LOST`."""
    from prefect.settings import PREFECT_API_URL

    from flows.audit import AuditFlagged, NothingAnswered, ShardsFailed, audit

    api_url = PREFECT_API_URL.value()

    def api_lost(silent_seconds: float) -> None:
        api_watch.stop_process(api_watch.lost_message(api_url, silent_seconds, config.out), EXIT_API_LOST)

    with api_watch.ApiWatch(api_url, api_watch.wait_seconds(), api_lost) as watch:
        try:
            state = audit(config, run_id=run_id, dask=dask, progress=True, return_state=True)
            result = state.result(raise_on_failure=False)
        except Exception:
            if api_watch.api_healthy(api_url):
                raise
            api_lost(watch.silent_seconds)  # Prefect gave up on the API before the watch's wait was over
    if isinstance(result, ShardsFailed):
        print(f"vlm-audit: {result}", file=sys.stderr)
        return EXIT_UNFINISHED, None
    if isinstance(result, NothingAnswered):  # the inputs or settings are wrong for every item
        print(f"vlm-audit: {result}", file=sys.stderr)
        return EXIT_USAGE, None
    if isinstance(result, AuditFlagged):
        print(format_summary(result.summary))
        return EXIT_FLAGGED, result.summary
    if isinstance(result, BaseException):
        raise result
    print(format_summary(result))
    return EXIT_OK, result


def _audit_hook(name: str, args: argparse.Namespace) -> int:
    """`vlm-audit aggregate` / `report` / `views`: from the Parquet outputs alone."""
    from auditing import aggregate_run, build_report
    from auditing.dashboards import describe_views, write_views
    from tasks.config import DEFAULT_FINDINGS, aggregate_config

    endpoint_url = getattr(args, "endpoint_url", None)
    if name == "views":
        print(describe_views(write_views(args.out, args.database, endpoint_url=endpoint_url)))
        return EXIT_OK
    if name == "aggregate":
        group_by = getattr(args, "group_by", None)
        if group_by is None:  # the run's own grouping, as its audit stored it in run.json
            group_by = stored_grouping(args.out, args.run_id, endpoint_url)
        config = aggregate_config(group_by, getattr(args, "findings", DEFAULT_FINDINGS))
        result = aggregate_run(args.out, args.run_id, config, endpoint_url=endpoint_url)
        print(f"run {args.run_id}: {len(result.cohort_stats)} cohort rows, {len(result.flags)} flags")
        for flag in result.flags:
            print(f"  FLAG {flag.message}")
        return EXIT_OK
    print(build_report(args.out, args.run_id, endpoint_url=endpoint_url))
    return EXIT_OK


def stored_grouping(out: str, run_id: str, endpoint_url: str | None) -> list[str]:
    """The grouping a run's audit used (run.json); `RunNotFound` for a run id that is not there."""
    from auditing.report import RunNotFound
    from storage import ObjectNotFound, open_store, read_run, read_table

    try:
        config = read_run(open_store(out, endpoint_url=endpoint_url), run_id).get("config") or {}
    except ObjectNotFound:
        if read_table(out, "answers", run_id=run_id, endpoint_url=endpoint_url).num_rows:
            return []
        raise RunNotFound(
            f"no run {run_id!r} under {out}: neither runs/run_id={run_id}/run.json nor answers parts exist; "
            "check the output root and the run id"
        ) from None
    # runs written before the aggregation settings were nested kept group_by at the top of the config
    return list((config.get("aggregation") or {}).get("group_by", config.get("group_by")) or [])


def _demo_studies(args: argparse.Namespace) -> int:
    """Write phantom volumes (DICOM series) and prior/current pairs, audit each with the study model."""
    from phantom import STUDY_MODEL_PATH, require_model_folder
    from phantom.demo import DEMO_GROUPINGS, write_study_datasets

    args.n = args.n or 8
    # volumes are checked slice by slice (image occlusion, a forward per slice), pairs cell by cell too
    args.faithfulness_sample = getattr(args, "faithfulness_sample", 4)
    args.model = require_model_folder(getattr(args, "model", STUDY_MODEL_PATH), "study")
    if not hasattr(args, "group_by"):
        args.group_by = DEMO_GROUPINGS
    manifests = write_study_datasets(os.path.join(args.out, "data-studies"), args.n, args.seed)
    print(
        f"wrote {args.n} phantom volumes and {args.n} prior/current pairs: {', '.join(map(str, manifests.values()))}"
    )
    dask, codes = dask_settings(args), []
    with _prefect_api():
        for kind, manifest in manifests.items():
            print(f"\n== auditing the {kind} studies with the study phantom model ({args.model})")
            config = audit_config(args, str(manifest), os.path.join(args.out, "audit-studies"))
            code, _result = _run_flow(config, args.run_id, dask)
            if code not in (EXIT_OK, EXIT_FLAGGED):
                return code
            codes.append(code)
    return max(codes)


def _demo(args: argparse.Namespace) -> int:
    """Write the mixed phantom cohort, audit it with the honest and the shortcut model, compare."""
    from flows.demo import demo_models, format_comparison
    from phantom import require_model_folder
    from phantom.demo import DEMO_GROUPINGS, write_demo_dataset

    if args.studies:
        return _demo_studies(args)
    args.n = args.n or 24
    args.faithfulness_sample = getattr(args, "faithfulness_sample", 12)
    models = {"model": require_model_folder(args.model)} if hasattr(args, "model") else demo_models()
    manifest = write_demo_dataset(os.path.join(args.out, "data"), args.n, args.seed)
    print(f"wrote {args.n} phantom cases and {manifest}")
    if not hasattr(args, "group_by"):
        args.group_by = DEMO_GROUPINGS
    results, codes = {}, []
    dask = dask_settings(args)
    with _prefect_api():
        for name, model in models.items():
            print(f"\n== auditing with the {name} phantom model ({model})")
            args.model = model
            config = audit_config(args, str(manifest), os.path.join(args.out, "audit"))
            code, result = _run_flow(config, args.run_id, dask)
            if code not in (EXIT_OK, EXIT_FLAGGED):  # a failed gate still shows the comparison
                return code
            results[name], codes = result, [*codes, code]
    if config.aggregate:
        print(format_comparison(results))
    return max(codes)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("aggregate", "report", "views"):
        from auditing.report import RunNotFound

        try:
            return _audit_hook(args.command, args)
        except RunNotFound as exc:
            print(f"vlm-audit: {exc}", file=sys.stderr)
            return EXIT_USAGE
    _prepare_environment(args.verbose)
    from flows.server import ServerStartError
    from phantom import PhantomModelMissing, require_model_folder
    from storage import StorageError
    from tasks.cache import ModelLoadError
    from tasks.config import default_model
    from tasks.ledger import RunConflict
    from tasks.lock import RunLocked
    from tasks.retry import is_transient

    try:
        if args.command == "demo":
            return _demo(args)
        if not hasattr(args, "model"):
            args.model = require_model_folder(default_model())
        config, dask = audit_config(args, args.manifest, args.out), dask_settings(args)  # checked first
        if args.dry_run:
            from tasks.preflight import preview_run

            print(preview_run(config, args.run_id).describe())
            return EXIT_OK
        with _prefect_api():
            code, _result = _run_flow(config, args.run_id, dask)
        return code
    except (
        PhantomModelMissing, StorageError, ModelLoadError, RunConflict, RunLocked, ServerStartError, ValueError
    ) as exc:  # fmt: skip
        if isinstance(exc, ValidationError):  # a bad setting: its option named, in one line
            prefix = "dask_" if exc.title == DaskSettings.__name__ else ""
            print(f"vlm-audit: {settings_error(exc, prefix=prefix)}", file=sys.stderr)
            return EXIT_USAGE
        print(f"vlm-audit: {exc}", file=sys.stderr)
        return EXIT_UNFINISHED if is_transient(exc) else EXIT_USAGE  # an outage: rerun later


if __name__ == "__main__":
    sys.exit(main())
