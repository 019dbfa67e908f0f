"""`sweep`: audit every manifest under a data-lake prefix that has no completed run yet.

For lakes without event hooks. What it launched is remembered in the output store
(`<out>/sweeps/launched.json`, keyed by manifest URI), so a second sweep launches nothing new.
By default each audit runs here as a subflow; with `deployment` each becomes a flow run of that
deployment (`run_deployment(..., timeout=0)`), picked up by workers of its pool, with the
deployment's own settings (its `config` parameter) under the sweep's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from storage import ObjectNotFound, ObjectStore, list_runs, open_store, read_json, read_run, write_json
from storage.manifests import MANIFEST_FORMATS
from storage.uri import normalize_uri
from tasks.config import AuditConfig
from tasks.ledger import now_iso
from tasks.steps import STORAGE_IO

LAUNCHES_KEY = "sweeps/launched.json"  # manifest URI → what the sweep launched for it


def manifest_uris(store: ObjectStore, exclude: str | None = None) -> list[str]:
    """URIs of manifest files (.csv, .jsonl, .ndjson, .parquet) under the store, outside `exclude`."""
    excluded = normalize_uri(exclude).rstrip("/") + "/" if exclude else None
    uris = []
    for key in store.list():
        name = key.rsplit("/", 1)[-1]
        if name.startswith((".", "_")) or not name.lower().endswith(tuple(MANIFEST_FORMATS)):
            continue
        uri = store.uri(key)
        if excluded is None or not uri.startswith(excluded):
            uris.append(uri)
    return uris


def pending_manifests(candidates: Iterable[str], completed: set[str], launched: dict[str, Any]) -> list[str]:
    """Candidates with neither a completed run nor an earlier launch, in order."""
    return [uri for uri in candidates if uri not in completed and uri not in launched]


def completed_manifests(out_store: ObjectStore) -> set[str]:
    """Manifest URIs that have a run.json with status 'completed' under the output root."""
    done = set()
    for run_id in list_runs(out_store):
        record = read_run(out_store, run_id)
        if record.get("status") == "completed" and record.get("manifest_uri"):
            done.add(record["manifest_uri"])
    return done


def read_launches(out_store: ObjectStore) -> dict[str, Any]:
    """What earlier sweeps launched, keyed by manifest URI (empty before the first launch)."""
    try:
        return read_json(out_store, LAUNCHES_KEY)
    except ObjectNotFound:
        return {}


@task(name="find-pending-manifests", **STORAGE_IO)
def find_pending(prefix: str, out: str, endpoint_url: str | None, region: str | None) -> list[str]:
    lake = open_store(prefix, endpoint_url=endpoint_url, region=region)
    out_store = open_store(out, endpoint_url=endpoint_url, region=region)
    return pending_manifests(
        manifest_uris(lake, exclude=out), completed_manifests(out_store), read_launches(out_store)
    )


@task(name="record-launch", **STORAGE_IO)
def record_launch(out: str, endpoint_url: str | None, region: str | None, manifest: str, entry: dict) -> None:
    out_store = open_store(out, endpoint_url=endpoint_url, region=region)
    launches = read_launches(out_store)
    launches[manifest] = entry
    write_json(out_store, LAUNCHES_KEY, launches)


@task(name="launch-deployment", cache_policy=NO_CACHE)
def launch_deployment(deployment: str, settings: dict[str, Any]) -> str:
    """A flow run of `deployment` for one manifest; returns its id.

    Prefect replaces a flow run's parameter as a whole, so the deployment's own `config` is merged
    with `settings` here and validated before the run is created.
    """
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    with get_client(sync_client=True) as client:
        defaults = client.read_deployment_by_name(deployment).parameters.get("config") or {}
    config = AuditConfig(**{**defaults, **settings})
    flow_run = run_deployment(
        deployment,
        parameters={"config": config.model_dump(mode="json")},
        timeout=0,
        idempotency_key=f"vlm-audit-sweep:{config.manifest}",
    )
    return str(flow_run.id)


@flow(name="vlm-audit-sweep")
def sweep(
    prefix: str,
    out: str,
    deployment: str | None = None,
    settings: dict[str, Any] | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Start an audit for each manifest under `prefix` without a completed run; returns what it launched.

    Args:
        prefix: the data-lake folder or s3:// prefix to list for manifests.
        out: the audits' output root (also where the sweep records what it launched).
        deployment: launch each audit as a flow run of this deployment ("flow-name/deployment-name")
            instead of running it here.
        settings: `AuditConfig` fields for every audit (model, method, cohorts ...); the manifest,
            output root, endpoint and region come from the sweep.
        endpoint_url: S3-compatible endpoint (unset: the AWS configuration).
        region: S3 region (unset: the AWS configuration).
        limit: launch at most this many audits in this sweep.
    """
    from flows.audit import audit

    logger = get_run_logger()
    pending = find_pending(prefix, out, endpoint_url, region)
    pending = pending[:limit] if limit is not None else pending
    common = {**(settings or {}), "out": out, "endpoint_url": endpoint_url, "region": region}
    launched = []
    for manifest in pending:
        entry: dict[str, Any] = {"mode": "deployment" if deployment else "subflow"}
        if deployment:
            entry["flow_run_id"] = launch_deployment(deployment, {**common, "manifest": manifest})
        else:
            state = audit(AuditConfig(**common, manifest=manifest), return_state=True)
            result = state.result(raise_on_failure=False)
            entry.update(
                {"status": "completed", "run_id": result.run_id}
                if state.is_completed()
                else {"status": "failed", "error": f"{type(result).__name__}: {result}"}
            )
        entry["launched_at"] = now_iso()
        record_launch(out, endpoint_url, region, manifest, entry)  # one at a time: a crash relaunches nothing
        logger.info("launched %s: %s", manifest, entry)
        launched.append({"manifest": manifest, **entry})
    return {"pending": len(pending), "launched": launched}
