"""Which storage failures are worth retrying, and a small backoff loop for writes inside a shard.

Prefect retries whole tasks (`retry_condition_fn=is_transient`); a shard's part writes retry here,
so a flaky PUT does not redo the shard's GPU work. Deterministic failures (wrong credentials, a
missing object, a bad key, a schema violation) are never retried: the same call fails the same way.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from storage import (
    CredentialsError,
    InvalidURIError,
    ManifestError,
    ObjectNotFound,
    SchemaError,
    StorageError,
)

T = TypeVar("T")
DETERMINISTIC = (CredentialsError, InvalidURIError, ManifestError, ObjectNotFound, SchemaError)
logger = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    """True for storage errors that may pass on a second try (connection, throttling, 5xx)."""
    return isinstance(exc, StorageError) and not isinstance(exc, DETERMINISTIC)


def retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a failed I/O task only when its error is transient."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


def with_backoff(call: Callable[[], T], *, attempts: int = 4, base_seconds: float = 1.0, what: str = "") -> T:
    """Run `call`, retrying transient storage errors with exponential backoff and jitter."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except StorageError as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            delay = base_seconds * 2 ** (attempt - 1) * (1 + 0.5 * random.random())
            logger.warning("%s failed (%s); retry %d/%d in %.1fs", what, exc, attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
