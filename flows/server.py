"""The CLI's temporary Prefect server: started when no PREFECT_API_URL is set, gone with the CLI.

Prefect's own temporary server is a child process that outlives a CLI killed with SIGKILL (≈220 MB,
still listening, adopted by init). This one runs Prefect's documented `prefect server start` in a
child that the kernel signals when its parent dies (Linux's PR_SET_PDEATHSIG), and that is stopped
on every other exit of the CLI.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

from flows.api_watch import api_healthy

_PR_SET_PDEATHSIG = 1


class ServerStartError(RuntimeError):
    """The temporary Prefect server did not answer in time."""


def _parent_death_signal() -> Callable[[], None] | None:
    """A `preexec_fn` that asks the kernel to send the child SIGTERM when its parent dies (Linux).

    libc is found here, in the parent: the function itself runs in the forked child before exec and
    must do nothing but one system call.
    """
    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    if name is None:
        return None
    prctl = ctypes.CDLL(name, use_errno=True).prctl
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def temporary_server(startup_timeout: float = 180.0) -> Iterator[str]:
    """A Prefect server on a free loopback port for the block; yields its API URL."""
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--no-services"],  # flows run in this process: no scheduler, no late-run checks
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_parent_death_signal(),
    )
    try:
        deadline = time.monotonic() + startup_timeout
        while not api_healthy(api_url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise ServerStartError(
                    f"the temporary Prefect server did not start within {startup_timeout:.0f} s "
                    f"(exit code {process.poll()}); set PREFECT_API_URL to a running server instead"
                )
            time.sleep(0.25)
        yield api_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
