"""A held-out cohort whose manifest names neither the tag nor the site: strategy discovery finds the
shortcut model's tag cluster anyway, the honest model raises nothing that fails the gate, and the
calibration bench runs in its small mode."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd
import pytest

from auditing.rules.strategy_cluster import STRATEGY_RULE
from flows import cli
from phantom import MODEL_PATH, SHORTCUT_MODEL_PATH
from phantom.demo import write_demo_dataset
from storage import read_table
from vocabulary.names import CLUSTER_SCOPE

pytestmark = pytest.mark.integration
SEED = 24_800  # held out: training < 10,000, reports 20,000, benches 21,000-24,700
UNNAMED = ("site", "marker")  # the columns that would name the tag


def _untagged_manifest(folder) -> tuple[str, set[str]]:
    """The demo manifest without the columns that name the tag, and the ids of the tagged items."""
    manifest = write_demo_dataset(folder, 48, SEED)
    rows = list(csv.DictReader(manifest.open(newline="")))
    tagged = {row["item_id"] for row in rows if row["marker"] == "yes"}
    kept = [name for name in rows[0] if name not in UNNAMED]
    blind = folder / "manifest-untagged.csv"
    with blind.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=kept, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return str(blind), tagged


def test_the_tag_cluster_is_found_without_a_column_naming_it(tmp_path, capsys, prefect_server, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    manifest, tagged = _untagged_manifest(tmp_path / "data")
    out = str(tmp_path / "audit")
    options = ["--out", out, "--max-new-tokens", "8", "--overlays", "none", "--no-report", "--fail-on-flags"]
    runs = {}
    for name, model, code in (
        ("honest", MODEL_PATH, cli.EXIT_OK),
        ("shortcut", SHORTCUT_MODEL_PATH, cli.EXIT_FLAGGED),
    ):
        assert cli.main(["run", manifest, "--model", str(model), *options]) == code, name
        printed = capsys.readouterr().out
        runs[name] = next(
            line.split()[1].rstrip(":") for line in printed.splitlines() if line.startswith("run ")
        )
    flags = {name: read_table(out, "flags", run_id=run).to_pandas() for name, run in runs.items()}
    assert not (flags["honest"]["rule"] == STRATEGY_RULE).any()
    assert (flags["honest"]["scope"] == "item").all()  # only worklist entries, if any: the gate passed

    raised = flags["shortcut"][flags["shortcut"]["rule"] == STRATEGY_RULE]
    assert set(raised["scope"]) == {CLUSTER_SCOPE}
    clusters = read_table(out, "clusters", run_id=runs["shortcut"]).to_pandas()
    best = max(
        (set(clusters.loc[clusters["cluster"] == int(cluster), "item_id"]) for cluster in raised["cohort"]),
        key=lambda members: len(members & tagged),
    )
    assert len(best & tagged) >= 0.8 * len(best)  # purity
    assert len(best & tagged) >= 0.6 * len(tagged)  # coverage
    assert raised["metric"].iloc[0] in ("corners_share", "border_share")  # where the tag is


def test_the_calibration_bench_runs_in_its_small_mode(tmp_path, prefect_server, monkeypatch):
    from bench.flag_calibration import main

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    # the bench sets these where unset; set here, they stay as they were for the tests after this one
    for key, value in (("PREFECT_LOGGING_LEVEL", "WARNING"), ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
                       ("PREFECT_HOME", str(Path.home() / ".prefect"))):  # fmt: skip
        monkeypatch.setenv(key, os.environ.get(key, value))
    result = main(
        [
            "--n",
            "40",
            "--shuffles",
            "2",
            "--subsets",
            "2",
            "--reseeds",
            "2",
            "--json",
            str(tmp_path / "c.json"),
        ]
    )
    assert result["strategy"]["honest"]["any_flag_rate"] == 0.0
    assert result["strategy"]["shortcut"]["detected_rate"] == 1.0
    assert result["item_flags"]["honest"]["rate"] <= 0.05 < result["item_flags"]["shortcut"]["rate"]
    assert result["shortcut_detection"] == 1.0 and result["honest_shuffled"]["any_flag_rate"] == 0.0
    assert pd.read_json(tmp_path / "c.json", typ="series")["cases"] == 40


def test_honest_study_answers_are_clustered_as_studies_and_raise_no_strategy_flag(
    tmp_path, capsys, prefect_server, monkeypatch
):
    """Held-out phantom volumes and prior/current pairs through the study model: the answers of each
    class are clustered by their profile and peak slice; the diffuse "no" answers of the volumes put
    about half their relevance outside the body, as a uniform map would, and are not flagged."""
    from tests.auditing.test_study_strategies import N_SLICES

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    options = ["--n", "40", "--seed", "24900", "--faithfulness-sample", "0", "--overlays", "none"]
    assert cli.main(["demo", "--studies", "--out", str(tmp_path), *options, "--no-report"]) == cli.EXIT_OK
    printed = capsys.readouterr().out
    runs = [line.split()[1].rstrip(":") for line in printed.splitlines() if line.startswith("run ")]
    out = str(tmp_path / "audit-studies")
    volume_run = runs[0]
    clusters = read_table(out, "clusters", run_id=volume_run).to_pandas()
    answers = read_table(out, "answers", run_id=volume_run).to_pandas().set_index("item_id")
    assert set(answers.loc[clusters["item_id"], "n_images"]) == {N_SLICES}
    counts = answers["answer"].value_counts()
    assert clusters.groupby("answer_class").size().to_dict() == {
        answer: int(count) for answer, count in counts.items() if count >= 10
    }
    for run in runs:
        flags = read_table(out, "flags", run_id=run).to_pandas()
        assert not (flags["rule"] == STRATEGY_RULE).any(), flags["message"].tolist()
