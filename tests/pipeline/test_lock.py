"""The run lock: one process at a time computes a run id; a killed process's lock does not block."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from storage import LocalStore, open_store, run_lock_key
from tasks.lock import RunLocked, run_lock


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _write_lock(store, run_id: str, **fields) -> None:
    store.write_bytes(run_lock_key(run_id), json.dumps(fields).encode())


def test_a_second_process_is_refused_while_the_first_computes_and_admitted_after(tmp_path):
    store = LocalStore(str(tmp_path))
    with run_lock(store, "r1", flow_run_id="first"):
        held = json.loads(store.read_bytes(run_lock_key("r1")))
        assert held["host"] == socket.gethostname() and held["flow_run_id"] == "first"
        with (
            pytest.raises(RunLocked, match=r"run r1 is being computed by .*flow run first.*wait for it"),
            run_lock(store, "r1", flow_run_id="second"),
        ):
            pass
        with run_lock(store, "r2"):  # another run id is not held up
            pass
    assert not store.exists(run_lock_key("r1"))  # released on exit
    with run_lock(store, "r1"):
        pass


def test_exactly_one_of_two_simultaneous_runs_gets_the_lock(tmp_path):
    store = LocalStore(str(tmp_path))
    barrier, outcomes = threading.Barrier(2), []
    release = threading.Event()

    def run() -> None:
        barrier.wait()
        try:
            with run_lock(store, "r1"):
                outcomes.append("computed")
                release.wait(5)
        except RunLocked:
            outcomes.append("refused")
            release.set()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(outcomes) == ["computed", "refused"]


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    store = LocalStore(str(tmp_path))
    _write_lock(store, "r1", host=socket.gethostname(), pid=_dead_pid(), heartbeat_at=time.time())
    with run_lock(store, "r1", flow_run_id="rerun"):
        assert json.loads(store.read_bytes(run_lock_key("r1")))["flow_run_id"] == "rerun"


def test_another_hosts_lock_blocks_until_its_heartbeat_stops(tmp_path):
    store = LocalStore(str(tmp_path))
    _write_lock(store, "r1", host="gpu-node-7", pid=1, heartbeat_at=time.time())
    with pytest.raises(RunLocked, match="gpu-node-7"), run_lock(store, "r1", stale_after_seconds=60):
        pass
    _write_lock(store, "r1", host="gpu-node-7", pid=1, heartbeat_at=time.time() - 61)
    with run_lock(store, "r1", stale_after_seconds=60):
        pass


def test_the_holder_keeps_its_lock_alive(tmp_path):
    store = LocalStore(str(tmp_path))
    with run_lock(store, "r1", heartbeat_seconds=0.05):
        first = json.loads(store.read_bytes(run_lock_key("r1")))["heartbeat_at"]
        time.sleep(0.3)
        assert json.loads(store.read_bytes(run_lock_key("r1")))["heartbeat_at"] > first


@pytest.mark.integration
def test_on_s3_the_lock_is_a_conditional_write(s3_bucket):
    store = open_store(s3_bucket)
    assert store.create_exclusive("probe.json", b"{}") and not store.create_exclusive("probe.json", b"[]")
    assert store.read_bytes("probe.json") == b"{}"  # the second write changed nothing
    with (
        run_lock(store, "r1", flow_run_id="first"),
        pytest.raises(RunLocked, match="flow run first"),
        run_lock(store, "r1"),
    ):
        pass
    assert not store.exists(run_lock_key("r1"))
