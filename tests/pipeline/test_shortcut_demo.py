"""The headline demo, end to end: the audit flags the model that reads the burned-in corner tag and
not the honest one (shipped phantom models, the real flow, aggregation from the Parquet outputs)."""

from __future__ import annotations

import pytest

from flows import cli
from flows.demo import behaviour
from storage import read_table

pytestmark = pytest.mark.integration


@pytest.mark.usefixtures("prefect_server")
def test_the_audit_flags_the_shortcut_model_and_not_the_honest_one(tmp_path, capsys):
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
