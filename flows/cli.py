"""`vlm-audit`: run an audit, run the demo, and (through the audit package) aggregate and report.

    vlm-audit run s3://scans/batch-07/manifest.csv --out s3://audits/out --model google/medgemma-1.5-4b-it
    vlm-audit demo --out demo-output --n 24

With no PREFECT_API_URL, Prefect starts a temporary local server for the run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from tasks.config import DEFAULT_FINDINGS

EXIT_OK, EXIT_FAILED_SHARDS, EXIT_USAGE = 0, 1, 2


def _dask_resource(text: str) -> tuple[str, float]:
    name, _, amount = text.partition("=")
    try:
        return name.strip(), float(amount)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--dask-resource wants NAME=AMOUNT such as GPU=1, got {text!r}"
        ) from None


def _add_aggregate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--group-by", help="comma-separated manifest metadata columns forming cohorts ('site+scanner': both)"
    )


def _words(text: str | None) -> list[str] | None:
    return [word.strip() for word in text.split(",") if word.strip()] if text else None


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="hub id or local folder (default: the bundled phantom model)")
    parser.add_argument("--revision", dest="model_revision", help="hub revision to pin")
    parser.add_argument(
        "--method", default="chefer", choices=["chefer", "rollout", "raw_attention", "occlusion"]
    )
    parser.add_argument("--targets", default="findings", choices=["answer", "findings", "all"])
    parser.add_argument(
        "--findings",
        help=f"comma-separated findings vocabulary (default: {','.join(DEFAULT_FINDINGS[:6])},...)",
    )
    parser.add_argument("--overlays", default="answer", choices=["none", "answer", "findings", "all"])
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--run-id", help="default: derived from the manifest's content and these settings")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", help="model dtype, e.g. bfloat16 (default: the checkpoint's)")
    dask = parser.add_mutually_exclusive_group()
    dask.add_argument("--dask-address", help="run shards on this Dask scheduler (tcp://host:8786)")
    dask.add_argument("--dask-workers", type=int, help="run shards on a local Dask cluster of N processes")
    parser.add_argument(
        "--dask-resource", type=_dask_resource, action="append", help="per-shard resource, e.g. GPU=1"
    )
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS configuration)")
    parser.add_argument("--region", help="S3 region (default: AWS configuration)")
    _add_aggregate_options(parser)
    parser.add_argument(
        "--faithfulness-sample",
        type=int,
        default=0,
        help="check N items' maps against occlusion, removal curves and randomisation (default 0: off)",
    )
    parser.add_argument(
        "--no-aggregate", dest="aggregate", action="store_false", help="skip cohort statistics and report"
    )
    parser.add_argument("--no-report", dest="report", action="store_false", help="skip the HTML report")
    parser.add_argument("--verbose", action="store_true", help="show Prefect's per-task log lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm-audit", description="Audit where a medical VLM looks.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="audit the items of a manifest")
    run.add_argument("manifest", help="manifest URI (.csv, .jsonl, .parquet; local or s3://)")
    run.add_argument("--out", required=True, help="output root (local folder or s3://bucket/prefix)")
    _add_run_options(run)
    demo = commands.add_parser("demo", help="write phantom cases and audit them with the phantom model")
    demo.add_argument("--out", default="demo-output", help="local folder for the data and the outputs")
    demo.add_argument("--n", type=int, default=24, help="number of phantom cases")
    demo.add_argument("--seed", type=int, default=0)
    _add_run_options(demo)
    # a few shards so the progress bar moves; cohorts by site; a faithfulness sample of a dozen items
    demo.set_defaults(shard_size=4, faithfulness_sample=12, max_new_tokens=8)
    for name, text in (
        ("aggregate", "recompute cohort statistics and flags of a run"),
        ("report", "rebuild the HTML report of a run"),
    ):
        sub = commands.add_parser(name, help=f"{text} from its Parquet outputs (no model needed)")
        sub.add_argument("out", help="output root (local folder or s3://bucket/prefix)")
        sub.add_argument("run_id")
        sub.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS configuration)")
        if name == "aggregate":
            _add_aggregate_options(sub)
            sub.add_argument("--findings", help="comma-separated findings vocabulary")
    return parser


def flow_parameters(args: argparse.Namespace, manifest: str, out: str) -> dict[str, Any]:
    """The `flows.audit.audit` parameters for parsed `run`/`demo` arguments."""
    dask = None
    if args.dask_address or args.dask_workers:
        dask = {"address": args.dask_address, "n_workers": args.dask_workers}
        if args.dask_resource:
            dask["resources"] = dict(args.dask_resource)
    return {
        "manifest": manifest,
        "out": out,
        "model": args.model,
        "model_revision": args.model_revision,
        "method": args.method,
        "targets": args.targets,
        "findings": _words(args.findings),
        "overlays": args.overlays,
        "shard_size": args.shard_size,
        "max_new_tokens": args.max_new_tokens,
        "run_id": args.run_id,
        "device": args.device,
        "dtype": args.dtype,
        "endpoint_url": args.endpoint_url,
        "region": args.region,
        "dask": dask,
        "faithfulness_sample": args.faithfulness_sample,
        "group_by": _words(args.group_by),
        "aggregate": args.aggregate,
        "report": args.report,
        "progress": True,
    }


def format_summary(result: dict[str, Any]) -> str:
    """Counts and where the outputs are, for the terminal."""
    from storage import join_uri

    counts, run_id, out = result["counts"], result["run_id"], result["out"]
    where = lambda table: join_uri(out, table, f"run_id={run_id}")  # noqa: E731
    lines = [
        f"run {run_id}: {counts['items']} items ({counts['ok']} ok, {counts['failed']} failed), "
        f"{counts['targets']} token rows, {counts['errors']} error rows "
        f"({counts['manifest_errors']} from the manifest); {counts['shards_skipped']} of {counts['shards']} "
        f"shards were already done; {result['timings']['total_seconds']:.1f} s",
        f"  answers   {where('answers')}/*.parquet",
        f"  tokens    {where('tokens')}/*.parquet",
        f"  errors    {where('errors')}/*.parquet",
        f"  overlays  {where('overlays')}/<item_id>/<target>.png",
        f"  run.json  {result['run_json']}",
        f"  report    {where('report')}/index.html (vlm-audit report {out} {run_id})",
    ]
    return "\n".join(lines)


def _prepare_environment(verbose: bool) -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the temporary server needs more than Prefect's default 20 s on a small or busy machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the progress bar and summary say enough
    from explainer.runtime import keep_freed_memory

    keep_freed_memory()


def _run(parameters: dict[str, Any]) -> int:
    return _run_flow(parameters)[0]


def _run_flow(parameters: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    """Run the audit flow; the exit code and, when it completed, its summary."""
    from flows.audit import ShardsFailed, audit

    if not os.environ.get("PREFECT_API_URL"):
        print(
            "starting a temporary local Prefect server (set PREFECT_API_URL to use a running one)",
            file=sys.stderr,
        )

    try:
        result = audit(**parameters)
    except ShardsFailed as exc:
        print(f"vlm-audit: {exc}", file=sys.stderr)
        return EXIT_FAILED_SHARDS, None
    print(format_summary(result))
    return EXIT_OK, result


def _audit_hook(name: str, args: argparse.Namespace) -> int:
    """`vlm-audit aggregate` / `report`: from the run's Parquet outputs alone."""
    from auditing import DEFAULT_FINDINGS as findings
    from auditing import AggregateConfig, aggregate_run, build_report

    if name == "aggregate":
        config = AggregateConfig(
            group_by=tuple(_words(args.group_by) or ()), findings=tuple(_words(args.findings) or findings)
        )
        result = aggregate_run(args.out, args.run_id, config, endpoint_url=args.endpoint_url)
        print(f"run {args.run_id}: {len(result.cohort_stats)} cohort rows, {len(result.flags)} flags")
        for message in result.flags["message"]:
            print(f"  FLAG {message}")
        return EXIT_OK
    print(build_report(args.out, args.run_id, endpoint_url=args.endpoint_url))
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    """Write the mixed phantom cohort, audit it with the honest and the shortcut model, compare."""
    from flows.demo import demo_models, format_comparison
    from phantom import require_model_folder
    from phantom.demo import DEMO_GROUPINGS, write_demo_dataset

    models = {"model": require_model_folder(args.model)} if args.model else demo_models()
    manifest = write_demo_dataset(os.path.join(args.out, "data"), args.n, args.seed)
    print(f"wrote {args.n} phantom cases and {manifest}")
    args.group_by = args.group_by or ",".join(DEMO_GROUPINGS)
    results = {}
    for name, model in models.items():
        print(f"\n== auditing with the {name} phantom model ({model})")
        args.model = model
        code, result = _run_flow(flow_parameters(args, str(manifest), os.path.join(args.out, "audit")))
        if code != EXIT_OK:
            return code
        results[name] = result
    if args.aggregate:
        print(format_comparison(results))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("aggregate", "report"):
        return _audit_hook(args.command, args)
    _prepare_environment(args.verbose)
    from phantom import PhantomModelMissing, require_model_folder
    from storage import StorageError
    from tasks.cache import ModelLoadError
    from tasks.config import default_model
    from tasks.ledger import RunConflict

    try:
        if args.command == "demo":
            return _demo(args)
        if args.model is None:
            args.model = require_model_folder(default_model())
        return _run(flow_parameters(args, args.manifest, args.out))
    except (PhantomModelMissing, StorageError, ModelLoadError, RunConflict, ValueError) as exc:
        print(f"vlm-audit: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
