"""Where shards run: in this process (one at a time, one model) or on a Dask cluster.

One Dask worker per GPU: start workers with one thread each (`dask worker tcp://sched:8786
--nthreads 1`), or with `--resources GPU=1` and set `resources={"GPU": 1}` here, which annotates every
shard task so a worker runs at most one at a time; dask-cuda's `LocalCUDACluster` starts one worker
per visible GPU and pins each to its device. docs/pipeline.md has the commands.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner

from tasks.config import DaskSettings

# One shard at a time in this process: the model runs one explanation at a time anyway (under its
# lock), overlays are encoded and stored on the shard's own background thread, and a second shard
# thread only competed with the model for the GIL (7.1 against 7.9–9.0 items/s on the phantom model,
# docs/performance.md).
LOCAL_SHARD_THREADS = 1


def task_runner_for(dask: DaskSettings | None) -> Any:
    """Without Dask: a thread-pool runner of `LOCAL_SHARD_THREADS` shard threads in this process, all
    sharing the one loaded model. With Dask: a DaskTaskRunner."""
    if dask is None:
        return ThreadPoolTaskRunner(max_workers=LOCAL_SHARD_THREADS)
    from prefect_dask import DaskTaskRunner

    if dask.address is not None:
        return DaskTaskRunner(address=dask.address)
    cluster_kwargs: dict[str, Any] = {
        "n_workers": dask.n_workers,
        "threads_per_worker": dask.threads_per_worker,
        "dashboard_address": None,  # no web server per test or CLI run; `dask scheduler` gives one
    }
    if dask.cluster_class == "distributed.LocalCluster":
        cluster_kwargs["processes"] = True  # one model per worker process, not per thread
    if dask.resources:  # the workers advertise what the shard tasks ask for (LocalCUDACluster passes it on)
        cluster_kwargs["resources"] = dict(dask.resources)
    return DaskTaskRunner(cluster_class=dask.cluster_class, cluster_kwargs=cluster_kwargs)


@contextlib.contextmanager
def task_resources(dask: DaskSettings | None) -> Iterator[None]:
    """Annotate the shard tasks submitted inside the block with the settings' Dask resources."""
    if dask is None or not dask.resources:
        yield
        return
    import dask as dask_core

    with dask_core.annotate(resources=dict(dask.resources)):
        yield
