"""The CLI's temporary Prefect server dies with the CLI, even when the CLI is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import api_watch
from flows import cli as cli_module
from flows.api_watch import api_healthy
from storage import completed_shards, open_store, read_table
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


def _temporary_server(cli: subprocess.Popen) -> tuple[int, str]:
    """The pid and API URL of the CLI's temporary Prefect server, once it answers."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        for pid, command in _children(cli.pid):
            if command[1:5] == ["-m", "prefect", "server", "start"]:
                api_url = f"http://127.0.0.1:{command[command.index('--port') + 1]}/api"
                if api_healthy(api_url):
                    return pid, api_url
        assert cli.poll() is None, f"the CLI exited with {cli.returncode} before its server answered"
        time.sleep(0.2)
    pytest.fail("the CLI started no temporary Prefect server")


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
        pid, api_url = _temporary_server(cli)
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait(timeout=30)
        deadline = time.monotonic() + 60
        while (_alive(pid) or api_healthy(api_url)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(pid) and not api_healthy(api_url), "the server outlived the killed CLI"
    finally:
        cli.kill()
        cli.wait(timeout=30)


def test_a_lost_prefect_api_ends_the_run_in_one_line_after_a_bounded_wait(tmp_path, model_dir):
    """The server killed once a shard committed: the run stops within the wait (3 s here) and a poll,
    with one line that names the API and says how to resume, exit 4, and no traceback."""
    manifest = local_dataset(tmp_path / "data", 200)  # one item a shard: far more work than the wait
    out = tmp_path / "out"
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), api_watch.WAIT_VARIABLE: "3"}
    command = [sys.executable, "-m", "flows.cli", "run", manifest, "--out", str(out), "--model", model_dir]
    command += ["--shard-size", "1", "--max-new-tokens", "3", "--no-aggregate"]
    with open(tmp_path / "stderr.log", "w+") as stderr:
        cli = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            pid, api_url = _temporary_server(cli)
            deadline = time.monotonic() + 240
            while not list(out.glob("answers/*/part-*.parquet")) and time.monotonic() < deadline:
                assert cli.poll() is None, "the CLI exited before committing a shard"
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            cli.wait(timeout=120)
            took = time.monotonic() - killed
        finally:
            cli.kill()
            cli.wait(timeout=30)
        stderr.seek(0)
        said = stderr.read()
    assert cli.returncode == cli_module.EXIT_API_LOST, said[-3000:]
    assert took < 3 + 2 + 15, took  # the wait, one poll, a margin for a loaded machine
    last = said.strip().splitlines()[-1]
    assert last.startswith(f"vlm-audit: lost the Prefect API at {api_url}") and str(out) in last
    assert "run the same command again" in last and "Traceback" not in said
    store = open_store(str(out))
    committed = completed_shards(store, read_table(str(out), "answers").to_pandas()["run_id"].iloc[0])
    assert 1 <= len(committed) < 200  # stopped mid-run; what committed is there to resume from
