"""The run lock: one process at a time computes a run id.

Two runs of one manifest with the same settings get the same run id; without a lock both would
compute every shard and both record attempt 1. The lock is an object beside run.json, created with an
exclusive write and kept alive by a heartbeat, so a run whose process was killed does not block the
next one for long.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from storage import ObjectNotFound, ObjectStore, StorageError, run_lock_key
from tasks.ledger import now_iso


class RunLocked(RuntimeError):
    """Another live process is computing this run id."""


HEARTBEAT_SECONDS = 30.0  # how often a running audit refreshes its lock
STALE_AFTER_SECONDS = 180.0  # a lock not refreshed for this long belongs to a process that is gone


def _lock_is_stale(lock: dict[str, Any], now: float, stale_after: float) -> bool:
    """A lock of a dead process on this host, or one whose heartbeat stopped (any host)."""
    if lock.get("host") == socket.gethostname():
        try:
            os.kill(int(lock["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            pass
    return now - float(lock.get("heartbeat_at", 0.0)) > stale_after


@contextlib.contextmanager
def run_lock(
    store: ObjectStore,
    run_id: str,
    *,
    flow_run_id: str | None = None,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    stale_after_seconds: float = STALE_AFTER_SECONDS,
) -> Iterator[None]:
    """Hold the run's lock object (`runs/run_id=<id>/lock.json`) while the block computes the run.

    Created with an exclusive write (O_EXCL locally, an S3 conditional PUT), refreshed every
    `heartbeat_seconds` on a background thread and deleted on exit. A second process computing the same
    run id meanwhile gets `RunLocked`; a lock left by a killed process is taken over (at once on the
    same host when its pid is gone, else once its heartbeat is `stale_after_seconds` old).
    """
    key = run_lock_key(run_id)
    owner = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "flow_run_id": flow_run_id,
        "acquired_at": now_iso(),
    }

    def payload() -> bytes:
        return json.dumps({**owner, "heartbeat_at": time.time()}).encode()

    if not store.create_exclusive(key, payload()):
        held = _read_lock(store, key)
        if not _lock_is_stale(held, time.time(), stale_after_seconds) or not _take_over(
            store, key, payload()
        ):
            raise RunLocked(
                f"run {run_id} is being computed by {held.get('host')}:{held.get('pid')} (flow run "
                f"{held.get('flow_run_id')}, since {held.get('acquired_at')}); wait for it to finish. A lock "
                f"whose process is gone is taken over once its heartbeat is {stale_after_seconds:.0f} s old"
            )
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_seconds):
            with contextlib.suppress(StorageError):  # a missed beat is retried at the next one
                store.write_bytes(key, payload())

    heartbeat = threading.Thread(target=beat, name=f"run-lock-{run_id}", daemon=True)
    heartbeat.start()
    try:
        yield
    finally:
        stop.set()
        heartbeat.join()
        with contextlib.suppress(StorageError):
            store.delete(key)


def _read_lock(store: ObjectStore, key: str) -> dict[str, Any]:
    """The lock's content ({} when it vanished or cannot be read: its process died while writing)."""
    try:
        return json.loads(store.read_bytes(key))
    except (ObjectNotFound, ValueError):
        return {}


def _take_over(store: ObjectStore, key: str, data: bytes) -> bool:
    """Replace a stale lock; False when another process took it over first."""
    store.delete(key)
    return store.create_exclusive(key, data)
