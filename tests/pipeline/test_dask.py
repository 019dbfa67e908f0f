"""The same audit flow on prefect-dask's DaskTaskRunner with a LocalCluster of 2 worker processes."""

from __future__ import annotations

import os

import pytest

from flows.audit import audit
from storage import open_store, read_run, read_table
from tasks.config import DaskSettings
from tests.pipeline.conftest import fast_config, local_dataset

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]


def test_two_worker_processes_load_the_model_once_each_and_respect_gpu_resources(tmp_path, model_dir):
    manifest = local_dataset(tmp_path / "data", 6)
    out = str(tmp_path / "out")
    # two threads per worker, but each shard asks for the worker's only "GPU": one shard at a time each
    dask = {"n_workers": 2, "threads_per_worker": 2, "resources": {"GPU": 1}}

    result = audit(fast_config(manifest, out, model=model_dir, shard_size=1), dask=dask)

    assert result["counts"]["ok"] == 6 and result["counts"]["shards_done"] == 6
    answers = read_table(out, "answers", result["run_id"]).to_pandas()
    assert sorted(answers.item_id) == [f"item-{i:03d}" for i in range(6)]
    record = read_run(open_store(out), result["run_id"])
    assert record["dask"] == {**dask, "cluster_class": "distributed.LocalCluster"}
    workers = record["workers"]
    pids = {int(worker["worker"].rsplit(":", 1)[1]) for worker in workers}
    assert os.getpid() not in pids and len(pids) == 2  # ran in the two Dask worker processes
    assert sum(worker["shards"] for worker in workers) == 6
    assert [worker["model_loads"] for worker in workers] == [1, 1]  # loaded once per process, kept
    assert [worker["max_concurrent_shards"] for worker in workers] == [1, 1]  # GPU=1 annotation applied


def test_dask_settings_need_exactly_one_cluster():
    with pytest.raises(ValueError, match=r"either address .* or n_workers"):
        DaskSettings(address="tcp://scheduler:8786", n_workers=2)
    with pytest.raises(ValueError, match="not neither"):
        DaskSettings()
