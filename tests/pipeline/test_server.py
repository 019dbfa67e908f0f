"""The CLI's temporary Prefect server dies with the CLI, even when the CLI is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.server import _healthy
from tests.pipeline.conftest import local_dataset

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's"),
]
REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[tuple[int, list[str]]]:
    """(pid, command line) of the live processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == pid and state != "Z":
            found.append((int(entry.name), [part.decode() for part in command if part]))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_killed_cli_takes_its_temporary_server_with_it(tmp_path, model_dir):
    manifest = local_dataset(tmp_path / "data", 40)
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    command = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        manifest,
        "--out",
        str(tmp_path / "out"),
        "--model",
        model_dir,
    ]
    cli = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, server = time.monotonic() + 240, None
        while server is None and time.monotonic() < deadline:
            servers = [
                (pid, cmd)
                for pid, cmd in _children(cli.pid)
                if cmd[1:5] == ["-m", "prefect", "server", "start"]
            ]
            if servers and _healthy(
                f"http://127.0.0.1:{servers[0][1][servers[0][1].index('--port') + 1]}/api"
            ):
                server = servers[0]
            time.sleep(0.2)
        assert server is not None, "the CLI started no temporary Prefect server"
        pid, cmd = server
        api_url = f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}/api"
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait(timeout=30)
        deadline = time.monotonic() + 60
        while (_alive(pid) or _healthy(api_url)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(pid) and not _healthy(api_url), "the server outlived the killed CLI"
    finally:
        cli.kill()
        cli.wait(timeout=30)
