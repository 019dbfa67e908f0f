"""Watching the Prefect API while the CLI runs a flow: a lost API ends the CLI in one line.

The audit's work does not need the API while it runs (task states and logs go out as events in the
background), but Prefect's bookkeeping does: without an API it retries every request and event for
minutes, then ends in raw connection tracebacks. The watch polls the API's health; once it has not
answered for `wait_seconds`, the CLI says what happened and stops (`EXIT_API_LOST`). Parts are
committed atomically, so everything a committed shard wrote is kept and a rerun of the same command
resumes after it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import urllib.request
from collections.abc import Callable

# how long the API may stay silent before the CLI stops: a server restart takes less
DEFAULT_WAIT_SECONDS = 60.0
WAIT_VARIABLE = "VLM_AUDIT_API_WAIT_SECONDS"


def api_healthy(api_url: str, timeout: float = 2.0) -> bool:
    """Does the Prefect API at `api_url` answer its health check?"""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def wait_seconds() -> float:
    """The wait before a silent API counts as lost: `VLM_AUDIT_API_WAIT_SECONDS`, else 60 s."""
    value = os.environ.get(WAIT_VARIABLE)
    try:
        return float(value) if value else DEFAULT_WAIT_SECONDS
    except ValueError:
        raise ValueError(f"{WAIT_VARIABLE} must be a number of seconds, got {value!r}") from None


def lost_message(api_url: str, silent_seconds: float, out: str) -> str:
    """The one line a lost API ends the CLI with."""
    return (
        f"vlm-audit: lost the Prefect API at {api_url} (no answer for {silent_seconds:.0f} s); every shard "
        f"committed so far is saved under {out}; run the same command again once the API is back to resume "
        "(committed shards are skipped)"
    )


class ApiWatch:
    """A daemon thread that polls the API every `poll_seconds` and calls `on_lost(silent_seconds)` once
    when it has not answered for `wait` seconds. Use as a context manager around the flow."""

    def __init__(
        self, api_url: str, wait: float, on_lost: Callable[[float], None], poll_seconds: float = 2.0
    ) -> None:
        self.api_url, self.wait, self.on_lost, self.poll_seconds = api_url, wait, on_lost, poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="prefect-api-watch", daemon=True)
        self.silent_since: float | None = None

    @property
    def silent_seconds(self) -> float:
        """How long the API has not answered, as of the last poll (0 while it answers)."""
        return time.monotonic() - self.silent_since if self.silent_since is not None else 0.0

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            if api_healthy(self.api_url):
                self.silent_since = None
                continue
            now = time.monotonic()
            self.silent_since = self.silent_since or now
            if now - self.silent_since >= self.wait:
                self.on_lost(now - self.silent_since)
                return

    def __enter__(self) -> ApiWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()


def stop_process(message: str, code: int) -> None:
    """Print `message` and end the process now: Prefect's exit handlers would retry the lost API for
    minutes. Nothing of the audit is lost: uncommitted work is redone by the rerun."""
    print(f"\n{message}", file=sys.stderr, flush=True)  # on a line of its own, below a progress bar
    sys.stdout.flush()
    os._exit(code)
