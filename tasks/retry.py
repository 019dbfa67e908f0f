"""Which storage failures are worth retrying, and a small backoff loop for writes inside a shard.

Prefect retries whole tasks (`retry_condition_fn=is_transient`); a shard's part writes retry here,
so a flaky PUT does not redo the shard's GPU work. Deterministic failures (wrong credentials, a
missing, refused or oversized object, a bad key, a schema violation) are never retried: the same
call fails the same way.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from storage import (
    CredentialsError,
    ImageDecodeError,
    InputNotAllowed,
    InvalidURIError,
    ManifestError,
    NotARegularFile,
    ObjectNotFound,
    ObjectTooLarge,
    OutputNotWritable,
    SchemaError,
    StorageError,
)

T = TypeVar("T")
DETERMINISTIC = (
    CredentialsError,
    ImageDecodeError,
    InputNotAllowed,
    InvalidURIError,
    ManifestError,
    NotARegularFile,
    ObjectNotFound,
    ObjectTooLarge,
    OutputNotWritable,
    SchemaError,
)
logger = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    """True for storage errors that may pass on a second try (connection, throttling, 5xx)."""
    return isinstance(exc, StorageError) and not isinstance(exc, DETERMINISTIC)


def is_environmental(exc: BaseException) -> bool:
    """True for failures of the environment rather than of the data: transient storage errors and
    credentials. They are never an item's final answer: a rerun after the outage or the key fix must
    redo the item, so the shard does not commit it."""
    return is_transient(exc) or isinstance(exc, CredentialsError)


def retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a failed task only when its error, or the error that caused
    it (a shard deferred by an item's outage), is transient."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc) or is_transient(exc.__cause__)
    return False


BACKOFF_SECONDS = 1.0  # the first wait; each further one doubles (with up to 50% jitter)


def with_backoff(call: Callable[[], T], *, attempts: int = 4, what: str = "") -> T:
    """Run `call`, retrying transient storage errors with exponential backoff and jitter."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except StorageError as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            delay = BACKOFF_SECONDS * 2 ** (attempt - 1) * (1 + 0.5 * random.random())
            logger.warning("%s failed (%s); retry %d/%d in %.1fs", what, exc, attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
