"""A run killed mid-way (SIGKILL of the CLI process) and rerun: nothing lost, nothing duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.audit import audit
from storage import completed_shards, open_store, read_run, read_table
from tests.pipeline.conftest import fast_config, local_dataset

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]
REPO = Path(__file__).resolve().parents[2]
N_ITEMS, SHARD_SIZE, RUN_ID = 12, 2, "killed-run"


def _wait_for_first_commit(process: subprocess.Popen, answers: Path, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers.is_dir() and any(name.endswith(".parquet") for name in os.listdir(answers)):
            return
        if process.poll() is not None:
            pytest.fail(f"the CLI exited with {process.returncode} before committing a shard")
        time.sleep(0.02)
    pytest.fail("no shard committed in time")


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path, model_dir, prefect_server):
    manifest = local_dataset(tmp_path / "data", N_ITEMS)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "flows.cli", "run", manifest, "--out", str(out), "--model", model_dir]
    command += [
        "--shard-size",
        str(SHARD_SIZE),
        "--max-new-tokens",
        "3",
        "--run-id",
        RUN_ID,
        "--no-aggregate",
    ]
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONFAULTHANDLER": "1"}
    with open(tmp_path / "cli.log", "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_first_commit(process, out / "answers" / f"run_id={RUN_ID}")
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    store = open_store(str(out))
    done_before = completed_shards(store, RUN_ID)
    assert 1 <= len(done_before) < N_ITEMS // SHARD_SIZE, (tmp_path / "cli.log").read_text()[-2000:]
    assert read_run(store, RUN_ID)["status"] == "running"  # the killed attempt never finished
    committed = {
        index: store.size(f"answers/run_id={RUN_ID}/part-{index:05d}.parquet") for index in done_before
    }

    result = audit(fast_config(manifest, out, model=model_dir, shard_size=SHARD_SIZE), run_id=RUN_ID)

    assert result.counts["shards_skipped"] == len(done_before)
    assert result.counts["shards_done"] == N_ITEMS // SHARD_SIZE
    answers = read_table(str(out), "answers", RUN_ID).to_pandas()
    assert sorted(answers.item_id) == [f"item-{i:03d}" for i in range(N_ITEMS)]  # each item exactly once
    tokens = read_table(str(out), "tokens", RUN_ID).to_pandas()
    key = ["item_id", "target_kind", "target_text", "token_position", "image_index"]
    assert not tokens.duplicated(key).any() and set(tokens.item_id) == set(answers.item_id)
    assert {i: store.size(f"answers/run_id={RUN_ID}/part-{i:05d}.parquet") for i in done_before} == committed
    record = read_run(store, RUN_ID)
    assert (record["status"], record["attempt"], record["counts"]["ok"]) == ("completed", 2, N_ITEMS)
