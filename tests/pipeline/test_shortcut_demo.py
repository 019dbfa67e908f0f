"""The headline demo, end to end: the audit flags the model that reads the burned-in corner tag and
not the honest one (shipped phantom models, the real flow, aggregation from the Parquet outputs)."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from flows import cli
from flows.demo import behaviour
from storage import read_table
from tasks.steps import FLAG_EVENT, artifact_key

pytestmark = pytest.mark.integration


def test_the_audit_flags_the_shortcut_model_and_not_the_honest_one(
    tmp_path, capsys, prefect_server, monkeypatch
):
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)  # the CLI reports to the test server
    code = cli.main(
        ["demo", "--out", str(tmp_path), "--n", "20", "--faithfulness-sample", "0", "--no-report"]
    )
    assert code == cli.EXIT_OK
    printed = capsys.readouterr().out
    out = str(tmp_path / "audit")
    runs = {line.split()[1].rstrip(":"): line for line in printed.splitlines() if line.startswith("run ")}
    assert len(runs) == 2
    honest, shortcut = list(runs)  # the demo audits the honest model first

    shortcut_stats, honest_stats = behaviour(out, shortcut), behaviour(out, honest)
    assert shortcut_stats["yes_with_tag_only"] >= 0.9 and shortcut_stats["yes_with_nodule_only"] <= 0.1
    assert honest_stats["yes_with_tag_only"] <= 0.1 and honest_stats["yes_with_nodule_only"] >= 0.9

    def shortcut_flags(run_id: str):
        flags = read_table(out, "flags", run_id=run_id).to_pandas()
        return flags[flags["rule"].isin(["corners_share_above_baseline", "border_share_above_baseline"])]

    flagged = shortcut_flags(shortcut)
    assert {("site", "north")} <= set(zip(flagged["grouping"], flagged["cohort"], strict=True))
    assert set(flagged["method"]) == {"chefer"} and "north" in flagged["message"].iloc[0]
    assert shortcut_flags(honest).empty
    assert "FLAG corners_share_above_baseline [chefer] site=north" in printed

    # `vlm-audit run` on the same manifest and settings resumes each run: it prints the flags, and
    # --fail-on-flags turns the shortcut's model-level flags into exit code 3 for CI gates and
    # schedulers, while the honest model's item flags (a worklist) do not fail it
    from phantom import MODEL_PATH, SHORTCUT_MODEL_PATH

    def again(model) -> list[str]:
        return ["run", str(tmp_path / "data" / "manifest.csv"), "--out", out, "--model", str(model), *options]

    options = [
        "--group-by",
        "site",
        "--shard-size",
        "4",
        "--max-new-tokens",
        "8",
        "--no-report",
        "--fail-on-flags",
    ]
    assert cli.main(again(SHORTCUT_MODEL_PATH)) == cli.EXIT_FLAGGED
    printed = capsys.readouterr().out
    assert (
        f"run {shortcut}:" in printed and "FLAG corners_share_above_baseline [chefer] site=north" in printed
    )
    assert "gate: FAILED, " in printed and "item flags on" in printed and "(scope 'item')" in printed
    assert cli.main(again(MODEL_PATH)) == cli.EXIT_OK
    printed = capsys.readouterr().out
    assert f"run {honest}:" in printed and "gate: passed" in printed

    # what Prefect users and automations see: the verdict as the run's state, artifacts, events
    all_flags = read_table(out, "flags", run_id=shortcut).to_pandas()
    n_cohort_flags = int((all_flags["scope"] != "item").sum())
    artifacts, events, states = asyncio.run(_prefect_view(shortcut, n_cohort_flags))
    markdown = artifacts[artifact_key(shortcut)]
    assert (
        "cohort flag" in markdown and "Looks at the image corners" in markdown and "site = north" in markdown
    )
    rules = {(row["rule"], row["cohort"]) for row in artifacts[artifact_key(shortcut) + "-flags"]}
    assert ("corners_share_above_baseline", "north") in rules
    assert ("corners_share_above_baseline", "north") in {
        (e.payload["rule"], e.payload["cohort"]) for e in events
    }
    assert all(event.resource.id == f"vlm-audit.run.{shortcut}" for event in events)
    named = [name for name, _ in states if re.fullmatch(r"manifest-\d{8}-\d{6}", name)]
    assert len(named) >= 2  # both demo runs: the manifest's name and the date
    assert any(
        message.endswith("raised.") and "cohort flag" in message for _, message in states
    )  # the verdict
    assert any("Gate failed: " in message for _, message in states)  # the gated rerun ended Flagged


async def _prefect_view(run_id: str, n_events: int):
    """The run's artifacts (key → data), its `n_events` flag events (polled: the server stores them
    asynchronously) and every flow run's (name, state message)."""
    async with get_client() as client:
        keys = [artifact_key(run_id), artifact_key(run_id) + "-flags"]
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
        artifacts = {artifact.key: artifact.data for artifact in found}
        if isinstance(artifacts.get(keys[1]), str):  # table artifacts come back as JSON text
            import json

            artifacts[keys[1]] = json.loads(artifacts[keys[1]])
        wanted = EventFilter(
            event=EventNameFilter(name=[FLAG_EVENT]),
            resource=EventResourceFilter(id=[f"vlm-audit.run.{run_id}"]),
        )
        deadline = time.monotonic() + 30
        while True:
            events = (await client.read_events(filter=wanted, limit=50)).events
            if len(events) >= n_events or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        runs = await client.read_flow_runs()
        return artifacts, events, [(run.name, run.state.message or "") for run in runs]
