"""The same audit flow on prefect-dask's DaskTaskRunner with a LocalCluster of 2 worker processes."""

from __future__ import annotations

import os

import numpy as np
import pytest

from flows.audit import audit
from storage import manifest_fingerprint, open_store, read_manifest, read_run, read_table
from tasks.config import DaskSettings
from tasks.shards import ShardJob
from tasks.worker import explain_shard
from tests.pipeline.conftest import fast_config, local_dataset

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]


def test_two_worker_processes_load_the_model_once_each_and_respect_gpu_resources(tmp_path, model_dir):
    manifest = local_dataset(tmp_path / "data", 6)
    out = str(tmp_path / "out")
    # two threads per worker, but each shard asks for the worker's only "GPU": one shard at a time each
    dask = {"n_workers": 2, "threads_per_worker": 2, "resources": {"GPU": 1}}

    result = audit(fast_config(manifest, out, model=model_dir, shard_size=1), dask=dask)

    assert result.counts["ok"] == 6 and result.counts["shards_done"] == 6
    answers = read_table(out, "answers", result.run_id).to_pandas()
    assert sorted(answers.item_id) == [f"item-{i:03d}" for i in range(6)]
    record = read_run(open_store(out), result.run_id)
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


def test_a_local_cluster_of_any_class_gives_its_workers_the_resources_the_shards_ask_for():
    from flows.runners import task_runner_for

    # another class path than the default's (dask_cuda.LocalCUDACluster is not installed here)
    for cluster_class in ("distributed.LocalCluster", "distributed.deploy.local.LocalCluster"):
        settings = DaskSettings(n_workers=2, cluster_class=cluster_class, resources={"GPU": 1})
        runner = task_runner_for(settings)
        assert runner.cluster_kwargs["resources"] == {"GPU": 1.0}, cluster_class


def test_batched_shards_on_two_worker_processes_give_the_rows_of_one_item_at_a_time(tmp_path, model_dir):
    manifest_path = local_dataset(tmp_path / "data", 6)
    out = str(tmp_path / "out")
    config = fast_config(manifest_path, out, model=model_dir, shard_size=3, batch_size=3, targets="all")

    result = audit(config, dask={"n_workers": 2})

    assert result.counts["ok"] == 6 and result.counts["shards_done"] == 2
    workers = read_run(open_store(out), result.run_id)["workers"]
    assert os.getpid() not in {int(worker["worker"].rsplit(":", 1)[1]) for worker in workers}
    manifest = read_manifest(manifest_path)
    single = config.model_copy(update={"batch_size": 1, "out": str(tmp_path / "single")})
    for shard in range(2):  # the same shards one item at a time, in this process
        explain_shard(ShardJob(result.run_id, shard, manifest_fingerprint(manifest), single))
    for table in ("answers", "tokens"):
        batched = read_table(out, table, result.run_id).to_pandas().sort_values("item_id", kind="stable")
        alone = read_table(single.out, table, result.run_id).to_pandas().sort_values("item_id", kind="stable")
        assert list(batched.item_id) == list(alone.item_id)
        if table == "answers":
            assert list(batched.answer) == list(alone.answer)
            continue
        for got, want in zip(batched.image_relevance, alone.image_relevance, strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
