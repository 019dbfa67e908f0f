"""Checks before any shard runs: cohort columns, the model, cohorts by default, the run's own grouping."""

from __future__ import annotations

import pytest

from flows import cli
from storage import open_store, parse_manifest, read_run, read_table
from tasks.preflight import PreflightError, automatic_groupings, check_groupings, check_model_available
from tests.pipeline.conftest import local_dataset


def _manifest(rows: int = 15):
    lines = ["image,question,site,scanner,patient,constant"]
    lines += [
        f"{i}.png,Q?,{'north' if i % 2 else 'south'},{'A' if i % 3 else 'B'},p{i},x" for i in range(rows)
    ]
    return parse_manifest("\n".join(lines).encode(), "/data/m.csv")


def test_a_missing_cohort_column_is_named_with_the_columns_there_are():
    manifest = _manifest()
    check_groupings(manifest, ("site", "site+scanner"))
    with pytest.raises(
        PreflightError, match=r"cannot group by sitee: .*columns are site, scanner, patient, constant"
    ):
        check_groupings(manifest, ("sitee",))


def test_cohorts_by_default_are_the_columns_with_few_well_filled_values():
    assert automatic_groupings(_manifest()) == ("site", "scanner")  # not the id-like or constant columns
    assert automatic_groupings(_manifest(rows=10)) == ("site",)  # scanner B has only 4 items of 10


def test_a_model_that_is_not_there_is_one_error_before_the_audit(tmp_path, model_dir, monkeypatch):
    check_model_available(model_dir, None, allow_download=False)
    with pytest.raises(PreflightError, match=r"has no config\.json"):
        check_model_available(str(tmp_path), None, allow_download=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(
        PreflightError, match=r"'google/medgemma-1\.5-4b-it' is not in the Hugging Face cache"
    ):
        check_model_available("google/medgemma-1.5-4b-it", None, allow_download=False)
    check_model_available("google/medgemma-1.5-4b-it", None, allow_download=True)


def test_a_grouping_typo_fails_before_anything_is_written(
    tmp_path, model_dir, capsys, prefect_server, monkeypatch
):
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)  # the CLI reports to the test server
    manifest = local_dataset(tmp_path / "data", 2)
    out = tmp_path / "out"
    code = cli.main(["run", manifest, "--out", str(out), "--model", model_dir, "--group-by", "stie"])
    assert code == cli.EXIT_USAGE
    assert "cannot group by stie" in capsys.readouterr().err
    assert not (out / "answers").exists() and not (out / "runs").exists()


def test_without_group_by_the_audit_groups_by_the_manifests_columns_and_aggregate_reuses_it(
    tmp_path, model_dir, capsys, prefect_server, monkeypatch
):
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    manifest = local_dataset(tmp_path / "data", 10)  # site: north/south, 5 items each
    out = str(tmp_path / "out")
    arguments = ["run", manifest, "--out", out, "--model", model_dir, "--max-new-tokens", "2", "--no-report"]
    assert cli.main(arguments) == cli.EXIT_OK
    printed = capsys.readouterr().out
    assert "cohorts by site (manifest columns with few values)" in printed
    run_id = next(line.split()[1].rstrip(":") for line in printed.splitlines() if line.startswith("run "))
    record = read_run(open_store(out), run_id)
    assert (
        record["config"]["aggregation"]["group_by"] == ["site"]
        and record["groupings_from"] == "manifest columns with few values"
    )

    assert cli.main(["aggregate", out, run_id]) == cli.EXIT_OK  # no --group-by: the run's own
    assert "cohort rows" in capsys.readouterr().out
    cohorts = read_table(out, "cohort_stats", run_id=run_id).to_pandas()
    assert set(cohorts["grouping"]) == {"all", "site"}
    assert cli.main(["aggregate", out, "no-such-run"]) == cli.EXIT_USAGE
    assert "no run 'no-such-run'" in capsys.readouterr().err
