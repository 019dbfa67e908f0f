"""The sweep flow: finds manifests without a completed run, launches each once, remembers it."""

from __future__ import annotations

import pytest

from flows.sweep import LAUNCHES_KEY, manifest_uris, pending_manifests, sweep
from storage import LocalStore, read_json
from tests.pipeline.conftest import local_dataset

pytestmark = pytest.mark.usefixtures("prefect_server")


def _lake(tmp_path) -> tuple[str, list[str]]:
    lake = tmp_path / "lake"
    manifests = [
        local_dataset(lake / "site-a", 1),
        local_dataset(lake / "site-b", 1, first_seed=5, name="b.csv"),
    ]
    (lake / "site-a" / "notes.txt").write_text("not a manifest")
    (lake / "site-a" / ".hidden.csv").write_text("image,question\n")
    return str(lake), manifests


def test_manifest_listing_skips_other_files_and_the_output_tree(tmp_path):
    lake, manifests = _lake(tmp_path)
    out = f"{lake}/audit-out"
    LocalStore(out).write_bytes("answers/run_id=r/part-00000.parquet", b"x")  # outputs are not manifests
    assert manifest_uris(LocalStore(lake), exclude=out) == sorted(manifests)
    assert pending_manifests(["a", "b", "c"], completed={"a"}, launched={"b": {}}) == ["c"]


def test_sweep_launches_each_new_manifest_once(tmp_path, model_dir):
    lake, manifests = _lake(tmp_path)
    out = str(tmp_path / "out")
    settings = {"model": model_dir, "max_new_tokens": 2, "aggregate": False}

    first = sweep(lake, out, settings=settings)
    assert sorted(entry["manifest"] for entry in first["launched"]) == sorted(manifests)
    assert {entry["status"] for entry in first["launched"]} == {"completed"}
    launches = read_json(LocalStore(out), LAUNCHES_KEY)
    assert set(launches) == set(manifests) and all(entry["run_id"] for entry in launches.values())

    assert sweep(lake, out, settings=settings)["launched"] == []  # nothing new


def test_sweep_through_a_deployment_creates_one_flow_run_per_manifest(tmp_path, model_dir):
    from prefect.client.orchestration import get_client

    from flows.audit import audit

    lake, manifests = _lake(tmp_path)
    out = str(tmp_path / "out")
    audit.to_deployment(name="sweep-target", parameters={"config": {"model": model_dir}}).apply()

    result = sweep(lake, out, deployment="vlm-audit/sweep-target")

    with get_client(sync_client=True) as client:
        runs = [client.read_flow_run(entry["flow_run_id"]) for entry in result["launched"]]
    configs = [run.parameters["config"] for run in runs]
    assert sorted(config["manifest"] for config in configs) == sorted(manifests)
    assert all(
        config["out"] == out and run.state.is_scheduled() for config, run in zip(configs, runs, strict=True)
    )
    assert all(config["model"] == model_dir for config in configs)  # the deployment's own setting kept
    assert sweep(lake, out, deployment="vlm-audit/sweep-target")["launched"] == []
